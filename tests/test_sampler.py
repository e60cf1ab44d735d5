"""sampler.sample against transformers' generate, a second forward and π_θ's own distribution."""
import json

import pytest
import torch

import data
import model
import sampler


def test_sampling_groups_mask_and_seed(vlm, records):
    m, processor = vlm
    batch = data.prompt_batch(processor, records[:2])
    a = sampler.sample(m, processor, batch, group_size=4, max_new_tokens=24, seed=7)
    b = sampler.sample(m, processor, batch, group_size=4, max_new_tokens=24, seed=7)
    c = sampler.sample(m, processor, batch, group_size=4, max_new_tokens=24, seed=8)
    assert a["completion_ids"].shape[0] == 8 and len(a["texts"]) == 8
    assert torch.equal(a["completion_ids"], b["completion_ids"]) and a["texts"] == b["texts"]
    assert not torch.equal(a["completion_ids"], c["completion_ids"])
    vision = processor.tokenizer.convert_tokens_to_ids(list(model.family(m).banned))
    assert not torch.isin(a["completion_ids"], torch.tensor(vision)).any()


def left_padded_pair(processor, records):
    pair = [records[0], next(r for r in records if r["image"] != records[0]["image"] and len(r["question"]) > 45)]
    batch = data.prompt_batch(processor, pair)
    assert (batch["attention_mask"][:, 0] == 0).any(), "rows of different lengths: one must be left padded"
    return batch


def test_the_sampler_decodes_greedily_as_generate_does(vlm, records):
    m, processor = vlm
    batch = left_padded_pair(processor, records)
    tok = processor.tokenizer
    ours = sampler.sample(m, processor, batch, greedy=True, group_size=3, max_new_tokens=40)["completion_ids"]
    theirs = m.generate(**batch, do_sample=False, max_new_tokens=40, eos_token_id=sampler.end_token_ids(processor, m),
                        pad_token_id=tok.pad_token_id, suppress_tokens=tok.convert_tokens_to_ids(list(model.family(m).banned)))
    theirs = theirs[:, batch["input_ids"].shape[1]:].repeat_interleave(3, 0)
    assert ours.shape[1] > 20 and torch.equal(ours, theirs[:, :ours.shape[1]])


def test_the_samplers_logprobs_are_those_of_a_second_forward(vlm, records):
    """What the sampler reports for each token is log π_θ (temperature 1, nothing suppressed): the loss's numbers."""
    m, processor = vlm
    batch = left_padded_pair(processor, records)
    for kwargs in (dict(), dict(temperature=0.7, top_p=0.9)):  # the log-probs stay π_θ's whatever the sampling
        out = sampler.sample(m, processor, batch, group_size=4, max_new_tokens=32, seed=3, **kwargs)
        ids, mask = out["completion_ids"], out["completion_mask"]
        with torch.no_grad():
            lp = model.completion_logprobs(m, model.repeat_prompts(batch, 4), ids, mask)
        torch.testing.assert_close(out["logprobs"][mask.bool()], lp[mask.bool()], atol=1e-5, rtol=1e-5)
        assert (out["logprobs"][mask == 0] == 0).all()


def test_the_sampler_masks_padding_under_eager_attention_as_under_sdpa(family_dir, records):
    """Eager attention takes the mask as additive floats, SDPA as booleans: with a left-padded row, both decode the
    same tokens with the same log-probs (a wrong form lets the padding in, or masks the prompt out)."""
    outs = {}
    for attention in ("sdpa", "eager"):
        m, processor = model.load_model(family_dir, device="cpu")
        m.set_attn_implementation(attention)
        assert m.config._attn_implementation == attention
        batch = left_padded_pair(processor, records)
        outs[attention] = sampler.sample(m, processor, batch, group_size=2, max_new_tokens=24, seed=5)
    assert torch.equal(outs["sdpa"]["completion_ids"], outs["eager"]["completion_ids"])
    torch.testing.assert_close(outs["sdpa"]["logprobs"], outs["eager"]["logprobs"], atol=1e-5, rtol=1e-5)


def chi_square(counts, probs):
    """Pearson's statistic and its degrees of freedom, bins of expected count < 5 pooled into one."""
    expected = probs * counts.sum()
    keep = expected >= 5
    stat = ((counts - expected)[keep] ** 2 / expected[keep]).sum()
    rest = expected[~keep].sum()
    if rest > 0:
        stat += (counts[~keep].sum() - rest) ** 2 / rest
    return stat.item(), int(keep.sum())


@pytest.mark.parametrize("temperature, top_p", [(1.0, 1.0), (0.7, 0.9)])
def test_the_sampler_draws_from_pi_theta(tiny, records, temperature, top_p):
    """20,000 first tokens of one prompt against π_θ's next-token distribution, computed here independently:
    softmax(logits / T) over the tokens that may be sampled, cut to the nucleus. A draw from the wrong distribution
    (T = 0.9) fails the same test."""
    m, processor = tiny
    batch = data.prompt_batch(processor, records[:1])
    with torch.no_grad():
        logits = m(**batch).logits[0, -1].double()
    logits[processor.tokenizer.convert_tokens_to_ids(list(model.family(m).banned))] = float("-inf")

    def target(t):
        p = (logits / t).softmax(-1)
        ranked, order = p.sort(descending=True)
        keep = ranked.cumsum(0) - ranked < top_p  # the nucleus: the most likely tokens until their mass reaches top_p
        p = torch.zeros_like(p).scatter(0, order, ranked * keep)
        return p / p.sum()

    draws = sampler.sample(m, processor, batch, group_size=20_000, max_new_tokens=1, seed=0, temperature=temperature,
                         top_p=top_p)["completion_ids"][:, 0]
    counts = torch.bincount(draws, minlength=logits.numel()).double()
    stat, df = chi_square(counts, target(temperature))
    assert df >= 5 and stat < df + 6 * (2 * df) ** 0.5, (stat, df)  # p ~ 1e-6 at the bound: a seeded, stable test
    wrong, df_wrong = chi_square(counts, target(0.9 if temperature == 1.0 else 1.0))
    assert wrong > df_wrong + 6 * (2 * df_wrong) ** 0.5, (wrong, df_wrong)


def test_sampling_ignores_the_checkpoints_generation_config(family_dir, records, tmp_path):
    """Qwen2.5-VL-3B-Instruct ships chat settings (repetition_penalty 1.05, top_k 1, ...): rollouts and evaluation
    must decode π_θ itself, sampled and greedy alike."""
    import shutil
    chatty = tmp_path / "chatty"
    shutil.copytree(family_dir, chatty)
    config = json.load(open(chatty / "generation_config.json"))
    config.update(repetition_penalty=1.05, top_k=1, top_p=0.001, temperature=0.1, do_sample=True,
                  no_repeat_ngram_size=2, typical_p=0.5, min_new_tokens=20, min_p=0.2, epsilon_cutoff=3e-4)
    json.dump(config, open(chatty / "generation_config.json", "w"))
    plain, processor = model.load_model(family_dir, device="cpu")
    chat, _ = model.load_model(str(chatty), device="cpu")
    assert chat.generation_config.repetition_penalty == 1.05  # the checkpoint's settings are loaded ...
    prompt = data.prompt_batch(processor, records[:2])
    for kwargs in (dict(group_size=4, seed=3), dict(greedy=True)):
        a = sampler.sample(plain, processor, prompt, max_new_tokens=32, **kwargs)
        b = sampler.sample(chat, processor, prompt, max_new_tokens=32, **kwargs)
        assert torch.equal(a["completion_ids"], b["completion_ids"])  # ... and sampling ignores them
    assert chat.generation_config.repetition_penalty == 1.05  # and keeps them for whoever else uses the model


def test_the_sampler_says_which_completions_ended_and_keeps_special_tokens_in_texts(vlm, records):
    m, processor = vlm
    tok = processor.tokenizer
    batch = data.prompt_batch(processor, records[:2])
    out = sampler.sample(m, processor, batch, group_size=4, max_new_tokens=24, seed=5)
    ids, mask, ended = out["completion_ids"], out["completion_mask"], out["ended"]
    assert torch.equal(ended, torch.isin(ids, torch.tensor(sampler.end_token_ids(processor, m))).any(1))
    assert out["texts"] == sampler.completion_texts(tok, ids, mask, ended)
    cut = sampler.sample(m, processor, batch, group_size=2, max_new_tokens=3, min_new_tokens=3, seed=5)
    assert not cut["ended"].any() and all(len(tok(t, add_special_tokens=False)["input_ids"]) >= 1 for t in cut["texts"])

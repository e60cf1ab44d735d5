"""The model families beside Qwen2.5-VL (model.FAMILIES): the tiny Qwen3-VL is the real one shrunk, its image and
deepstack features reach the output, its processor loads without torchvision, and every command runs on it. The
guarantees every family shares (step 0 exact, the tower once a step, the sampler = generate) are the Qwen2.5-VL tests
run for each family (the `family_dir` and `vlm` fixtures)."""
import json
import os
import shutil

import pytest
import torch
from helpers import grpo_args, metrics, torchrun
from safetensors.torch import load_file

import data
import model
import sampler
import tiny


def test_the_tiny_qwen3_vl_is_qwen3_vl_instruct_shrunk(qwen3_dir):
    config = json.load(open(os.path.join(qwen3_dir, "config.json")))
    text, vision = config["text_config"], config["vision_config"]
    assert config["model_type"] == "qwen3_vl" and config["tie_word_embeddings"]
    # set, not left to defaults: head_dim (128 by default) and the M-RoPE split (another by default), interleaved
    assert text["head_dim"] == text["hidden_size"] // text["num_attention_heads"] == 16
    assert text["rope_parameters"]["mrope_section"] == [4, 2, 2] and text["rope_parameters"]["mrope_interleaved"]
    assert sum(text["rope_parameters"]["mrope_section"]) == text["head_dim"] // 2
    # deepstack layers that fire in the tiny tower, one for each of the first language-model layers
    assert vision["deepstack_visual_indexes"] == [0, 1] and vision["depth"] == 2 and text["num_hidden_layers"] >= 2
    assert (vision["patch_size"], vision["spatial_merge_size"], vision["num_position_embeddings"]) == (16, 2, 64)
    m, processor = model.load_model(qwen3_dir, device="cpu")
    tok = processor.tokenizer
    assert type(m).__name__ == "Qwen3VLForConditionalGeneration" and type(processor).__name__ == "Qwen3VLProcessor"
    assert processor.image_processor.patch_size == 16 and list(processor.image_processor.image_mean) == [0.5, 0.5, 0.5]
    assert processor.chat_template == tiny.chat_template("qwen3-vl")  # the hub's, verbatim
    assert config["image_token_id"] == tok.convert_tokens_to_ids("<|image_pad|>")
    # <think> and </think> are added tokens but not special, as in Qwen3's tokenizer: a completion may write them
    think = tok.convert_tokens_to_ids(["<think>", "</think>"])
    assert tok("<think>x</think>", add_special_tokens=False)["input_ids"][::2] == think
    assert "<think>" not in sampler.special_tokens(tok) and "<|im_start|>" in sampler.special_tokens(tok)
    assert m.generation_config.do_sample and m.generation_config.top_k == 20  # the real chat settings, kept
    assert sampler.end_token_ids(processor, m) == tok.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])


def test_qwen3_vls_prompt_is_its_own_template_without_a_default_system_turn(qwen3_dir, records):
    _, processor = model.load_model(qwen3_dir, device="cpu")
    text = processor.apply_chat_template(data.messages(records[0]), add_generation_prompt=True, tokenize=False)
    assert text.startswith(f"<|im_start|>system\n{data.SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>") and text.endswith("<|im_start|>assistant\n")
    bare = processor.apply_chat_template(data.messages(records[0])[1:], add_generation_prompt=True, tokenize=False)
    assert bare.startswith("<|im_start|>user\n")  # Qwen2.5-VL's would add "You are a helpful assistant."


def test_the_image_and_its_deepstack_features_change_what_qwen3_vl_says(qwen3_dir, records):
    """At the tiny model's initialisation the image changes the greedy answer (at 0.02 a tiny random Qwen3-VL says the
    same for every image, so no test comparing outputs could fail), and the deepstack features, which the language
    model adds to its first layers' hidden states, change the logits."""
    m, processor = model.load_model(qwen3_dir, device="cpu")
    images = list(dict.fromkeys(r["image_path"] for r in records))[:4]
    asked = [{**records[0], "image_path": path} for path in images]
    prompt = data.prompt_batch(processor, asked)
    answers = sampler.sample(m, processor, prompt, greedy=True, max_new_tokens=12)["completion_ids"]
    assert len({tuple(a.tolist()) for a in answers}) > 1
    features = model.image_features(m, prompt)
    assert all(len(f) == 3 for f in features)  # merged tokens and two deepstack layers an image
    zeroed = tuple((f[0], *(torch.zeros_like(t) for t in f[1:])) for f in features)
    with torch.no_grad():
        logits = [m(**model.model_inputs(m, {**prompt, "image_features": f})).logits for f in (features, zeroed)]
    assert (logits[0] - logits[1]).abs().max() > 1e-2


@pytest.mark.parametrize("name", ["qwen3-vl", "gemma3"])
def test_the_family_processor_loads_without_autoprocessor_from_its_folder_an_adapter_and_a_copy(
        name, family_dirs, tmp_path, monkeypatch):
    """Where AutoProcessor fails (no torchvision: always for Qwen), the family's own classes and settings, never
    Qwen2.5-VL's (14-px patches for a 16-px Qwen3-VL; Gemma's 256 soft tokens for a model of 16): for a model folder,
    an adapter folder that names it and a folder of the processor alone (as train_sft.py saves it)."""
    import run
    folder = family_dirs[name]
    _, processor = model.load_model(folder, device="cpu")
    peft_model = model.add_lora(model.load_model(folder, device="cpu")[0], r=4, alpha=8)
    peft_model.save_pretrained(tmp_path / "adapter")
    run.save_processor(processor, str(tmp_path / "adapter"))
    os.makedirs(tmp_path / "alone")
    run.save_processor(processor, str(tmp_path / "alone"))
    monkeypatch.setattr(model.AutoProcessor, "from_pretrained", lambda *a, **k: (_ for _ in ()).throw(ImportError()))
    for where in (folder, tmp_path / "adapter", tmp_path / "alone"):
        loaded = model.load_processor(str(where))
        assert type(loaded).__name__ == type(processor).__name__ == model.FAMILIES[peft_model.config.model_type].processor
        assert loaded.chat_template == processor.chat_template
        if name == "qwen3-vl":
            assert loaded.image_processor.patch_size == 16
        else:
            assert loaded.image_seq_length == 16 and loaded.image_processor.size["height"] == 112
    shutil.copytree(folder, tmp_path / "other")
    config = json.load(open(tmp_path / "other" / "config.json"))
    json.dump({**config, "model_type": "llava"}, open(tmp_path / "other" / "config.json", "w"))
    with pytest.raises(ValueError, match="not in model.FAMILIES"):
        model.load_processor(str(tmp_path / "other"), kind="llava")


def test_the_end_of_turn_is_read_off_the_chat_template(tiny_dir, five, tmp_path, monkeypatch):
    """A template that closes assistant turns with another special token: SFT's targets end with it and the sampler
    stops at it (never the literal <|im_end|>)."""
    import train_sft
    folder = tmp_path / "other_end"
    shutil.copytree(tiny_dir, folder)
    template = (folder / "chat_template.jinja").read_text()
    (folder / "chat_template.jinja").write_text(template.replace("<|im_end|>", "<|box_end|>"))
    m, processor = model.load_model(str(folder), device="cpu")
    box_end = processor.tokenizer.convert_tokens_to_ids("<|box_end|>")
    assert sampler.end_of_turn(processor) == "<|box_end|>" and box_end in sampler.end_token_ids(processor, m)
    ends, real = [], data.target_batch
    monkeypatch.setattr(data, "target_batch", lambda tok, records, end: ends.append(end) or real(tok, records, end))
    train_sft.main(["--model", str(folder), "--data", five, "--out", str(tmp_path / "sft"), "--batch-size", "4",
                    "--micro-batch", "4", "--stop-after", "1"])
    assert ends and set(ends) == {"<|box_end|>"}
    ids, mask = real(processor.tokenizer, data.load_jsonl(five)[:2], "<|box_end|>")
    assert [row[keep.bool()][-1].item() for row, keep in zip(ids, mask)] == [box_end, box_end]


NEW = {"qwen3-vl": ("Qwen3VLProcessor", "<|image_pad|>"), "gemma3": ("Gemma3Processor", "<start_of_image>")}


@pytest.mark.parametrize("name", sorted(NEW))
def test_every_command_runs_on_each_family(name, family_dirs, five, synth_dir, tmp_path, monkeypatch, capsys):
    """train_sft.py (LoRA, --full, --group-by-image), train_grpo.py, evaluate.py through the project's sampler, ask.py
    and cots.py, each on the tiny model of each family beside Qwen2.5-VL, each output loading with its own processor."""
    import ask
    import cots
    import evaluate
    import train_grpo
    import train_sft
    base, (processor_class, image_token) = family_dirs[name], NEW[name]
    sft = tmp_path / "sft"
    small = ["--data", five, "--batch-size", "4", "--micro-batch", "4", "--lr", "1e-3"]
    train_sft.main(["--model", base, "--out", str(sft), "--epochs", "2", *small])
    for extra in (["--full"], ["--group-by-image"]):
        train_sft.main(["--model", base, "--out", str(tmp_path / extra[0][2:]), "--stop-after", "1", *small, *extra])
    assert type(model.load_processor(str(sft))).__name__ == processor_class
    grpo = tmp_path / "grpo"
    train_grpo.main(grpo_args(str(sft), five, grpo, "--max-new-tokens", "24"))  # an epoch: 3 steps
    assert [r["step"] for r in metrics(grpo)] == [1, 2, 3] and all(r["kl"] >= 0 for r in metrics(grpo))
    policy, processor = model.load_model(str(grpo), device="cpu")
    assert model.family(policy).name == name and type(processor).__name__ == processor_class
    monkeypatch.setattr(sampler, "generate", lambda *a, **k: pytest.fail("a family decodes through sampler.sample"))
    evaluate.main(["--ckpt", str(sft), str(grpo), "--data", five, "--out", str(tmp_path / "eval"), "--seeds", "0",
                   "--max-new-tokens", "24"])
    results = json.load(open(tmp_path / "eval" / "results.json"))
    assert len(results["results"]) == 2 and "consistency_rate" in results["results"][1]["per_seed"][0]
    first = data.load_jsonl(five)[0]
    rows = ask.main(["--ckpt", str(grpo), "--image", first["image_path"], "--question", first["question"],
                     "--options", ",".join(first["options"]), "--max-new-tokens", "24", "--judge", str(sft)])
    assert len(rows) == 1 and image_token in capsys.readouterr().out
    folder = tmp_path / "set"
    shutil.copytree(synth_dir, folder)
    for split in ("train", "test"):  # a few questions keep it short
        lines = open(folder / f"{split}.jsonl").readlines()[:2]
        open(folder / f"{split}.jsonl", "w").writelines(lines)
    summary = cots.main(["--data", str(folder), "--cot-model", base, "--max-new-tokens", "8"])
    assert summary["questions_before_cot_check"] == 4


@pytest.mark.parametrize("name", sorted(NEW))
def test_each_family_sharded_by_fsdp2_takes_the_replicated_step(name, family_dirs, five, tmp_path):
    """torchrun, 2 gloo processes: FSDP2 over the family's units (its vision blocks and decoder layers) ends the step
    with the replicated run's weights and KL."""
    m, _ = model.load_model(family_dirs[name], device="cpu")
    units, backbone = model.fsdp_units(m), model.inner(m)
    blocks = backbone.get_submodule(model.family(m).vision_blocks)
    assert len(units) == len(blocks) + len(backbone.language_model.layers)
    assert units[0] is blocks[0] and units[-1] is backbone.language_model.layers[-1]
    for run, extra in (("replicated", []), ("fsdp", ["--fsdp"])):
        torchrun("train_grpo.py", *grpo_args(family_dirs[name], five, tmp_path / run, "--stop-after", "1",
                                             "--max-new-tokens", "24", *extra))
    a = load_file(tmp_path / "fsdp" / "checkpoint-1" / "trainable.safetensors")
    b = load_file(tmp_path / "replicated" / "checkpoint-1" / "trainable.safetensors")
    assert a.keys() == b.keys() and len(a) > 20
    towers = tuple(f".{module}." for module in model.family(m).vision)
    assert not any(tower in k for k in a for tower in towers)  # the tower (Qwen3-VL's deepstack mergers too) is frozen
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=1e-5)
    assert metrics(tmp_path / "fsdp")[0]["kl"] == pytest.approx(metrics(tmp_path / "replicated")[0]["kl"], abs=1e-7)


def test_the_tiny_gemma3_is_gemma_3_4b_it_shrunk(gemma3_dir, records):
    config = json.load(open(os.path.join(gemma3_dir, "config.json")))
    text, vision = config["text_config"], config["vision_config"]
    assert config["model_type"] == "gemma3" and vision["model_type"] == "siglip_vision_model"
    # sliding-window layers and at least one global one, the window shorter than a prompt with its completion
    assert set(text["layer_types"]) == {"sliding_attention", "full_attention"} and text["sliding_window"] == 128
    assert text["head_dim"] == text["query_pre_attn_scalar"] == text["hidden_size"] // text["num_attention_heads"]
    assert text["rope_parameters"]["full_attention"]["rope_type"] == "linear"  # x8 on the global layers, as the 4B
    assert (vision["image_size"] // vision["patch_size"]) ** 2 // config["mm_tokens_per_image"] == 4  # pooled 2x2
    m, processor = model.load_model(gemma3_dir, device="cpu")
    tok = processor.tokenizer
    assert type(processor).__name__ == "Gemma3Processor" and processor.image_seq_length == 16
    assert processor.chat_template == tiny.chat_template("gemma3")  # the hub's, verbatim
    assert tok.convert_ids_to_tokens(list(range(5))) == ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]
    assert tok("x")["input_ids"][0] == tok.bos_token_id  # the tokenizer adds <bos>, as Gemma's does ...
    prompt = data.prompt_batch(processor, records[:2])
    assert ((prompt["input_ids"] == tok.bos_token_id).sum(1) == 1).all()  # ... and a prompt has one, the template's
    assert prompt["pixel_values"].shape[0] == 2  # one crop an image: pan-and-scan off
    assert (prompt["token_type_ids"] == 1).sum(1).tolist() == [16, 16]
    assert sampler.end_of_turn(processor) == "<end_of_turn>"
    assert sampler.end_token_ids(processor, m) == tok.convert_tokens_to_ids(["<end_of_turn>", "<eos>"])
    assert {"<start_of_turn>", "<end_of_turn>", "<image_soft_token>"} <= set(sampler.special_tokens(tok))
    assert m.generation_config.top_k == 64 and m.generation_config.cache_implementation == "hybrid"


def test_gemma3s_image_reaches_its_answer(gemma3_dir, records):
    """transformers starts the projector at zeros (the image then changes nothing, measured: a difference of exactly
    0); the tiny model's is random, its norms set so that the greedy answer depends on the image (at the defaults a tiny
    random Gemma echoes its last prompt token whatever the image)."""
    m, processor = model.load_model(gemma3_dir, device="cpu")
    assert m.model.multi_modal_projector.mm_input_projection_weight.abs().min() > 0
    images = list(dict.fromkeys(r["image_path"] for r in records))[:4]
    prompt = data.prompt_batch(processor, [{**records[0], "image_path": path} for path in images])
    answers = sampler.sample(m, processor, prompt, greedy=True, max_new_tokens=12)["completion_ids"]
    assert len({tuple(a.tolist()) for a in answers}) > 1
    assert (answers != prompt["input_ids"][:, -1:]).any()  # not the last prompt token echoed
    features = model.image_features(m, prompt)
    zeroed = tuple((torch.zeros_like(f[0]),) for f in features)
    with torch.no_grad():
        logits = [m(**model.model_inputs(m, {**prompt, "image_features": f})).logits for f in (features, zeroed)]
    assert (logits[0] - logits[1]).abs().max() > 1e-2


def test_gemma3s_prefill_masks_are_its_own_and_its_image_attends_both_ways(gemma3_dir, records, monkeypatch):
    """The sampler's prefill (its own masks: the causal one OR each image's block, AND the window on sliding layers)
    gives the logits of the model's own forward, which builds them from token_type_ids; without the image block they
    differ (a dict keyed full_attention alone would also miss the sliding layers' window)."""
    m, processor = model.load_model(gemma3_dir, device="cpu")
    prompt = data.prompt_batch(processor, records[:2])
    assert prompt["input_ids"].shape[1] > m.config.text_config.sliding_window  # the window binds in the prompt
    with torch.no_grad():
        own = m(**prompt).logits[:, -1].log_softmax(-1)
    real, calls = m.forward, []
    monkeypatch.setattr(m, "forward", lambda *a, **k: calls.append(real(*a, **k)) or calls[-1])

    def prefill(prompt):  # the log-probs of the sampler's first forward, its prefill
        calls.clear()
        sampler.sample(m, processor, prompt, greedy=True, max_new_tokens=1)
        return calls[0].logits[:, -1].log_softmax(-1)
    torch.testing.assert_close(prefill(prompt), own, atol=1e-4, rtol=1e-4)
    text_only = {**prompt, "token_type_ids": torch.zeros_like(prompt["token_type_ids"])}  # no image block
    assert (prefill(text_only) - own).abs().max() > 1e-2


def test_a_left_padded_row_sees_through_the_window_what_it_sees_alone(gemma3_dir, records):
    """The window counts cache slots, padding included; a row's padding is all on its left, so two of its tokens are as
    many slots apart batched as alone: a left-padded row, batched, decodes and scores what it does alone, the window
    binding (prompt and completion longer than it)."""
    m, processor = model.load_model(gemma3_dir, device="cpu")
    short = records[0]
    long = {**records[1], "question": records[1]["question"] + " Look at the whole image, then at its every part."}
    batch = data.prompt_batch(processor, [short, long])
    assert (batch["attention_mask"][0] == 0).sum() > 5 and batch["input_ids"].shape[1] > m.config.text_config.sliding_window
    together = sampler.sample(m, processor, batch, greedy=True, max_new_tokens=40)
    alone = sampler.sample(m, processor, data.prompt_batch(processor, [short]), greedy=True, max_new_tokens=40)
    n = alone["completion_ids"].shape[1]
    assert torch.equal(together["completion_ids"][:1, :n], alone["completion_ids"])
    keep = alone["completion_mask"].bool()
    torch.testing.assert_close(together["logprobs"][:1, :n][keep], alone["logprobs"][keep], atol=1e-5, rtol=1e-5)

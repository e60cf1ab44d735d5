"""Loading the policy and its processor, LoRA, and the log-probs of completions (model.py)."""
import json
import os

import pytest
import torch
from helpers import assert_grads_close, count_tower_images

import data
import model
import sampler
from tiny import SPECIAL_TOKENS


def test_tiny_loads_offline_like_the_hub_model(tiny_dir, tiny):
    m, processor = tiny
    assert type(m).__name__ == "Qwen2_5_VLForConditionalGeneration"
    config = json.load(open(os.path.join(tiny_dir, "config.json")))
    assert config["image_token_id"] == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert config["text_config"]["vocab_size"] >= len(processor.tokenizer)
    for token in SPECIAL_TOKENS:  # every special token is one token, as in Qwen's tokenizer
        assert len(processor.tokenizer(token, add_special_tokens=False)["input_ids"]) == 1
    assert processor.tokenizer.padding_side == "left"
    assert model.count_parameters(m) < 2_000_000


def test_left_padded_batch_equals_each_row_alone(vlm, records):
    m, processor = vlm
    pair = [records[0], next(r for r in records if r["image"] != records[0]["image"] and len(r["question"]) > 45)]
    batch = data.prompt_batch(processor, pair)
    assert (batch["attention_mask"][:, 0] == 0).any(), "rows of different lengths: one must be left padded"
    with torch.no_grad():
        logits = m(**batch).logits
        for i, r in enumerate(pair):
            alone = data.prompt_batch(processor, [r])
            n = alone["input_ids"].shape[1]
            torch.testing.assert_close(logits[i, -n:], m(**alone).logits[0], atol=1e-4, rtol=1e-4)


def test_completion_logprobs_equal_full_log_softmax_a_chunk_of_completion_positions_at_a_time(vlm, records,
                                                                                             monkeypatch):
    """The LM head runs on the completion's positions only, LOGITS_CHUNK logits at a time (never [B, T, V] at once:
    Gemma's 262k vocabulary), and the log-probs and their gradient are those of the full log-softmax."""
    m, processor = vlm
    batch = data.prompt_batch(processor, records[:3])
    ids, mask = data.target_batch(processor.tokenizer, records[:3], sampler.end_of_turn(processor))
    V, T = m.get_output_embeddings().weight.shape[0], ids.shape[1]
    monkeypatch.setattr(model, "LOGITS_CHUNK", 3 * 4 * V)  # 4 positions of the 3 rows a chunk
    shapes, head = [], m.get_output_embeddings()
    plain = head.forward
    monkeypatch.setattr(head, "forward", lambda hidden: shapes.append(tuple(hidden.shape[:2])) or plain(hidden))
    m.requires_grad_(True)
    lp = model.completion_logprobs(m, batch, ids, mask)
    assert shapes[:-1] == [(3, 4)] * (len(shapes) - 1) and sum(n for _, n in shapes) == T  # not [B, P+T, V]
    params = dict(m.named_parameters())
    grads = dict(zip(params, torch.autograd.grad((lp * mask).sum(), list(params.values()), allow_unused=True)))
    monkeypatch.setattr(head, "forward", plain)
    inputs = model.completion_inputs(batch, ids, mask)
    full = m(**inputs, position_ids=model.family(m).positions(m, inputs)[0]).logits.float().log_softmax(-1)
    P = batch["input_ids"].shape[1]
    naive = full[:, P - 1:-1].gather(2, ids.unsqueeze(2)).squeeze(2)
    torch.testing.assert_close(lp[mask.bool()], naive[mask.bool()], atol=1e-5, rtol=1e-5)
    naive_grads = dict(zip(params, torch.autograd.grad((naive * mask).sum(), list(params.values()), allow_unused=True)))
    assert_grads_close({n: g for n, g in grads.items() if g is not None},
                       {n: g for n, g in naive_grads.items() if g is not None}, rel=1e-4)


def test_end_of_turn_mask_stops_after_the_first_end_token():
    E = 9
    ids = torch.tensor([[1, 2, E, 3, E], [1, 2, 3, 4, 5], [E, 1, 1, 1, 1]])
    assert sampler.end_of_turn_mask(ids, [E]).tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]


VISION_PROJECTIONS = {"qwen2.5-vl": {"qkv", "proj", "gate_proj", "up_proj", "down_proj"},  # the towers' own names
                      "qwen3-vl": {"qkv", "proj", "linear_fc1", "linear_fc2"},
                      "gemma3": {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}}  # SigLIP's


def test_lora_targets_the_language_model_and_with_train_vision_the_towers_blocks(family_dir):
    m, _ = model.load_model(family_dir, device="cpu")
    peft_model = model.add_lora(m, r=4, alpha=8)
    wrapped = [n for n, _ in peft_model.named_modules() if n.endswith("lora_A")]
    assert wrapped and all("language_model" in n for n in wrapped)
    assert {n.split(".")[-2] for n in wrapped} == set(model.LORA_TARGETS.split(","))
    trainable = [n for n, p in peft_model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n for n in trainable)
    with_vision = model.add_lora(model.load_model(family_dir, device="cpu")[0], r=4, alpha=8, train_vision=True)
    vision = [n.removesuffix(".lora_A") for n, _ in with_vision.named_modules()
              if n.endswith("lora_A") and "language_model" not in n]
    blocks = model.inner(with_vision).get_submodule(model.family(with_vision).vision_blocks)
    assert all(f".{model.family(m).vision_blocks}." in n for n in vision)  # not the merger (Qwen3-VL's is linear_fc1/2)
    assert {n.split(".")[-1] for n in vision} == VISION_PROJECTIONS[model.family(m).name]
    assert len(vision) == len(blocks) * len(VISION_PROJECTIONS[model.family(m).name])


def test_repeat_prompts_repeats_rows_and_image_patches(vlm, records):
    """Each prompt n times in a row, its image patches (or features) with it, in every slot: [p0 p0 p0 p1 p1 p1]."""
    m, processor = vlm
    two = [records[0], next(r for r in records if r["image"] != records[0]["image"])]  # two images
    batch = data.prompt_batch(processor, two)
    patches = model.per_image_pixels(batch)  # Qwen: patches by the image's grid; Gemma: a [3, H, W] row
    assert len(patches) == 2 and not torch.equal(patches[0], patches[1])
    rep = model.repeat_prompts(batch, 3)
    assert torch.equal(rep["input_ids"], batch["input_ids"][[0, 0, 0, 1, 1, 1]])
    assert torch.equal(rep["pixel_values"], torch.cat([patches[i] for i in (0, 0, 0, 1, 1, 1)]))
    for key in ("image_grid_thw", "token_type_ids", "mm_token_type_ids"):
        if key in batch:
            assert torch.equal(rep[key], batch[key][[0, 0, 0, 1, 1, 1]])
    features = model.image_features(m, batch)
    assert not torch.equal(features[0][0], features[1][0])  # each image a tuple: its merged tokens (+ deepstack's)
    repeated = model.repeat_prompts({**batch, "image_features": features}, 3)["image_features"]
    assert len(repeated) == 6 and all(f is features[i] for f, i in zip(repeated, (0, 0, 0, 1, 1, 1)))


def test_shared_image_features_give_the_plain_loss_and_gradients_with_one_tower_pass_an_image(vlm, records):
    """train_sft.py --group-by-image: the rows that show one image share its tower pass (with gradient); the loss
    and every gradient, the vision tower's included, are those of one pass a row."""
    m, processor = vlm
    m.requires_grad_(True)
    two = [r for r in records if r["image_path"] == records[0]["image_path"]][:2]
    other = next(r for r in records if r["image_path"] != records[0]["image_path"])
    rows = [two[0], other, two[1]]  # image X, image Y, image X again
    prompt = data.prompt_batch(processor, rows)
    ids, mask = data.target_batch(processor.tokenizer, rows, sampler.end_of_turn(processor))
    images_seen = []
    hook = count_tower_images(m, images_seen)

    def loss_and_grads(shared):
        m.zero_grad()
        inputs = model.shared_image_features(m, prompt, [r["image_path"] for r in rows]) if shared else prompt
        loss = -(model.completion_logprobs(m, inputs, ids, mask) * mask).sum()
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}
    try:
        plain, plain_grads = loss_and_grads(False)
        shared, shared_grads = loss_and_grads(True)
    finally:
        hook.remove()
    assert images_seen == [3, 2]  # three images, then two
    torch.testing.assert_close(shared, plain)
    tower = model.family(m).vision[0]
    assert plain_grads.keys() == shared_grads.keys() and any(f".{tower}." in n for n in plain_grads)
    assert_grads_close(shared_grads, plain_grads)


def test_precomputed_image_features_replace_the_tower_in_every_forward(vlm, records):
    """With prompt["image_features"] (train_grpo.py's frozen tower, run once a step) a forward takes the features and
    never runs the tower again, and its log-probs are those the pixels give."""
    m, processor = vlm
    prompt = data.prompt_batch(processor, records[:2])
    ids, mask = data.target_batch(processor.tokenizer, records[2:6], sampler.end_of_turn(processor))
    with torch.no_grad():
        from_pixels = model.group_logprobs(m, prompt, ids, mask, 2)
        featured = {**prompt, "image_features": model.image_features(m, prompt)}
        calls = []
        hook = model.vision_modules(m)[0].register_forward_pre_hook(lambda *a: calls.append(1))
        try:
            shared = model.group_logprobs(m, featured, ids, mask, 2)
            repeated = model.group_logprobs(m, featured, ids, mask, 2, share_prompt=False)
        finally:
            hook.remove()
    assert calls == []
    torch.testing.assert_close(shared, from_pixels, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(repeated, from_pixels, atol=1e-5, rtol=1e-5)


def test_group_logprobs_share_the_prompt_and_equal_the_repeated_path(vlm, records):
    m, processor = vlm
    prompt = data.prompt_batch(processor, records[:3])
    rollout = sampler.sample(m, processor, prompt, group_size=4, max_new_tokens=16, seed=1)
    ids, mask = rollout["completion_ids"], rollout["completion_mask"]
    m.requires_grad_(True)
    params = list(m.parameters())
    results = []
    for fn in (lambda: model.completion_logprobs(m, model.repeat_prompts(prompt, 4), ids, mask),
               lambda: model.group_logprobs(m, prompt, ids, mask, 4)):
        lp = fn()
        grads = torch.autograd.grad((lp * mask).sum(), params, allow_unused=True)
        results.append((lp.detach(), torch.cat([g.flatten() for g in grads if g is not None])))
    (lp_a, g_a), (lp_b, g_b) = results
    torch.testing.assert_close(lp_a[mask.bool()], lp_b[mask.bool()], atol=1e-5, rtol=1e-5)
    assert ((g_a - g_b).norm() / g_a.norm()).item() < 1e-5


def rows_through(m, fn):
    """(rows of images through the vision tower, (batch, length) of each pass through the first decoder layer)."""
    images, layer = [], []
    hooks = [count_tower_images(m, images),
             model.inner(m).language_model.layers[0].register_forward_hook(
                 lambda mod, a, out: layer.append(tuple(a[0].shape[:2])))]
    try:
        fn()
    finally:
        for h in hooks:
            h.remove()
    return images, layer


def test_group_logprobs_run_each_prompt_once_per_group(vlm, records):
    m, processor = vlm
    prompt = data.prompt_batch(processor, records[:3])
    rollout = sampler.sample(m, processor, prompt, group_size=4, max_new_tokens=16, seed=1)
    ids, mask = rollout["completion_ids"], rollout["completion_mask"]
    P, T = prompt["input_ids"].shape[1], ids.shape[1]
    images, layer = rows_through(m, lambda: model.group_logprobs(m, prompt, ids, mask, 4))
    assert images == [3] and layer == [(3, P), (12, T - 1)]  # 3 prompts once, then their 12 completions
    images, layer = rows_through(m, lambda: model.completion_logprobs(m, model.repeat_prompts(prompt, 4), ids, mask))
    assert images == [12] and layer == [(12, P + T)]  # the plain path: every prompt 4 times
    m.gradient_checkpointing_enable()
    m.train()  # no KV cache under checkpointing in training: the caller asks for the plain path, for π_SFT too
    with pytest.raises(ValueError, match="share_prompt=False"):
        model.group_logprobs(m, prompt, ids, mask, 4)
    images, layer = rows_through(m, lambda: model.group_logprobs(m, prompt, ids, mask, 4, share_prompt=False))
    assert images == [12] and layer == [(12, P + T)]


def test_images_of_different_sizes_in_one_batch(tiny_dir, records, tmp_path):
    """Patches sliced per image and rotary positions per row: each prompt scores as it does alone."""
    import numpy as np
    from PIL import Image
    m, processor = model.load_model(tiny_dir, device="cpu")
    sizes = [(112, 112), (56, 112), (112, 28)]  # 16, 8 and 4 image tokens
    rs = []
    for i, (w, h) in enumerate(sizes):
        path = tmp_path / f"{i}.png"
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (h, w, 3), dtype=np.uint8)).save(path)
        rs.append({**records[i], "image_path": str(path)})
    prompt = data.prompt_batch(processor, rs)
    assert prompt["image_grid_thw"].prod(1).tolist() == [64, 32, 16]
    rollout = sampler.sample(m, processor, prompt, group_size=2, max_new_tokens=12, seed=0)
    ids, mask = rollout["completion_ids"], rollout["completion_mask"]
    with torch.no_grad():
        together = model.group_logprobs(m, prompt, ids, mask, 2)
        for i in range(3):
            alone = data.prompt_batch(processor, rs[i:i + 1])
            one = model.group_logprobs(m, alone, ids[2 * i:2 * i + 2], mask[2 * i:2 * i + 2], 2)
            keep = mask[2 * i:2 * i + 2].bool()
            torch.testing.assert_close(together[2 * i:2 * i + 2][keep], one[keep], atol=1e-5, rtol=1e-5)
    import train_grpo
    middle = model.take(prompt, slice(1, 2))
    assert torch.equal(middle["pixel_values"], prompt["pixel_values"][64:96]) and middle["image_grid_thw"].tolist() == [[1, 8, 4]]


def test_max_pixels_bounds_the_image_tokens(tiny_dir, records, tmp_path):
    import numpy as np
    from PIL import Image
    Image.fromarray(np.zeros((2048, 2048, 3), np.uint8)).save(tmp_path / "big.png")
    big = {**records[0], "image_path": str(tmp_path / "big.png")}
    tokens = lambda processor: int(data.prompt_batch(processor, [big])["image_grid_thw"].prod()) // 4  # noqa: E731
    def limited(max_pixels):
        processor = model.load_processor(tiny_dir)
        data.limit_pixels(processor, max_pixels)
        return processor
    assert tokens(model.load_processor(tiny_dir)) == 16  # the tiny processor's own bound: 112x112
    assert tokens(limited(56 * 56)) == 4
    assert tokens(limited(None)) == tokens(limited(data.MAX_IMAGE_TOKENS * 28 * 28)) == 16  # a lower own bound stays
    with pytest.raises(ValueError, match="below the processor's smallest image"):
        limited(100)


def test_an_adapter_is_merged_in_fp32_and_cast_once(tiny_dir, tmp_path):
    """bf16 loading must give the model Con-GRPO starts from: bf16(W + ΔW), not bf16(W) + ΔW rounded in bf16, which
    loses a small delta (here ~1/200 of the weights, as a rank-16 delta of std 1e-4 on weights of std 0.02)."""
    m, processor = model.load_model(tiny_dir, device="cpu")
    peft_model = model.add_lora(m, r=4, alpha=8, dropout=0.0)
    for name, p in peft_model.named_parameters():
        if "lora_" in name:
            torch.nn.init.normal_(p, std=0.03)
    peft_model.save_pretrained(tmp_path / "adapter")
    bf16, _ = model.load_model(str(tmp_path / "adapter"), device="cpu", dtype=torch.bfloat16)
    fp32, _ = model.load_model(str(tmp_path / "adapter"), device="cpu", dtype=torch.float32)
    weights = dict(bf16.named_parameters())
    name = next(n for n in weights if n.endswith("layers.0.self_attn.q_proj.weight"))
    delta = fp32.get_parameter(name) - m.get_parameter(name.replace(".weight", ".base_layer.weight"))
    assert delta.abs().max() > 0
    assert weights[name].dtype == torch.bfloat16 and torch.equal(weights[name], fp32.get_parameter(name).bfloat16())


def test_the_saved_processor_keeps_the_processors_chat_template(tiny_dir, tmp_path):
    import run
    _, processor = model.load_model(tiny_dir, device="cpu")
    processor.chat_template = processor.tokenizer.chat_template.replace("You are a helpful assistant.", "Be brief.")
    run.save_processor(processor, str(tmp_path))
    assert "Be brief." not in processor.tokenizer.chat_template  # the tokenizer in use keeps its own
    loaded = model.load_processor(str(tmp_path))
    chat = [{"role": "user", "content": [{"type": "text", "text": "hi"}]}]
    assert "Be brief." in loaded.apply_chat_template(chat, tokenize=False)


def test_completion_texts_keep_special_tokens_but_not_the_final_end_of_turn(tiny):
    _, processor = tiny
    tok = processor.tokenizer
    word, start, end, pad = tok("<think>", add_special_tokens=False)["input_ids"], tok.convert_tokens_to_ids(
        "<|im_start|>"), tok.convert_tokens_to_ids("<|im_end|>"), tok.pad_token_id
    ids = torch.tensor([[*word, start, *word, end, pad, pad, pad, pad], [*word, *word, start, *word]])  # ended; cut
    mask = sampler.end_of_turn_mask(ids, sampler.end_token_ids(processor))
    ended = torch.tensor([True, False])
    assert mask[0].sum() == 2 * len(word) + 2 and mask[1].all()
    texts = sampler.completion_texts(tok, ids, mask, ended)
    assert texts == ["<think><|im_start|><think>", "<think><think><|im_start|><think>"]


def test_tiny_vision_tower_flags_shape_the_tower(synth_dir, records, tmp_path):
    """tiny.py --vision-hidden/--vision-layers/--vision-heads (the demo's miniature settings) reach the written config
    and a model that reads an image with them."""
    import tiny
    out = str(tmp_path)
    tiny.main(["--out", out, "--corpus", os.path.join(synth_dir, "train.jsonl"), "--vocab-size", "512",
               "--vision-hidden", "32", "--vision-layers", "3", "--vision-heads", "4"])
    vision = json.load(open(os.path.join(out, "config.json")))["vision_config"]
    assert (vision["hidden_size"], vision["depth"], vision["num_heads"]) == (32, 3, 4)
    assert vision["fullatt_block_indexes"] == [0, 1, 2]
    m, processor = model.load_model(out, device="cpu")
    assert len(model.inner(m).visual.blocks) == 3 and model.inner(m).visual.blocks[0].attn.num_heads == 4
    with torch.no_grad():
        features = model.image_features(m, data.prompt_batch(processor, records[:1]))
    assert features[0][0].shape[-1] == m.config.text_config.hidden_size and torch.isfinite(features[0][0]).all()

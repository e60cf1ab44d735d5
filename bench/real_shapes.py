"""The real Qwen2.5-VL-3B architecture (random weights, built from its config values below, no download): peak
memory and seconds of one SFT step (LoRA) and one Con-GRPO step (LoRA and full fine-tuning, judge self) at the
paper's settings, in train_grpo.py's precision regime (--precision bf16: autocast around forward passes, a LoRA's base
in bf16, fully fine-tuned weights and their π_SFT in fp32, the LM head in fp32). Needs a GPU; on CPU it says it was
skipped (--tiny runs the same code at a toy width, to check it). Full fine-tuning of the 3.75B model needs ~75 GB
before activations: on an 80 GB GPU it reports that it does not fit (train_grpo.py --fsdp over several GPUs does).

    python bench/real_shapes.py [--micro-batch 8] [--group-size 8] [--prompts 8] [--max-new-tokens 256]
"""
import argparse
import copy
import os
import sys
import time
from contextlib import nullcontext

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import model as M  # noqa: E402
import run  # noqa: E402
import sampler  # noqa: E402
import train_grpo  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration  # noqa: E402

# Qwen/Qwen2.5-VL-3B-Instruct's config.json
QWEN25_VL_3B = dict(
    text_config=dict(vocab_size=151936, hidden_size=2048, intermediate_size=11008, num_hidden_layers=36,
                     num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000, rms_norm_eps=1e-6,
                     rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                     tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645),
    vision_config=dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, patch_size=14,
                       spatial_merge_size=2, temporal_patch_size=2, window_size=112, out_hidden_size=2048,
                       fullatt_block_indexes=[7, 15, 23, 31], tokens_per_second=2),
    image_token_id=151655, video_token_id=151656, vision_start_token_id=151652, vision_end_token_id=151653,
    tie_word_embeddings=True)
TINY = dict(QWEN25_VL_3B, text_config=dict(QWEN25_VL_3B["text_config"], hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                             "mrope_section": [2, 3, 3]}),
            vision_config=dict(QWEN25_VL_3B["vision_config"], depth=2, hidden_size=64, intermediate_size=128,
                               num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1]))


def prompts(n, image_px, prompt_text, device):
    """n prompts of one image (image_px², 14-px patches merged 2x2) and prompt_text text tokens, as the processor
    would give them: [text | <|vision_start|> image pads <|vision_end|> | text]."""
    grid = image_px // 14
    n_image = grid * grid // 4
    body = [151652] + [151655] * n_image + [151653]
    text = torch.randint(0, 150000, (n, prompt_text)).tolist()
    ids = torch.tensor([t[:prompt_text // 2] + body + t[prompt_text // 2:] for t in text], device=device)
    mm = (ids == 151655).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm,
            "pixel_values": torch.randn(n * grid * grid, 3 * 2 * 14 * 14, device=device),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * n, device=device)}


def measure(fn):
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t = time.perf_counter()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - t, run.peak_memory_gb()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro-batch", type=int, default=8, help="SFT examples / GRPO completions per forward")
    p.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step (paper: 8 x G=8 = 64)")
    p.add_argument("--group-size", type=int, default=8, help="G (paper: 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="GRPO completion length (default: %(default)s)")
    p.add_argument("--image-px", type=int, default=448, help="image side: 448 px gives 256 image tokens")
    p.add_argument("--prompt-text", type=int, default=120, help="text tokens of a prompt (system, question, options)")
    p.add_argument("--target", type=int, default=200, help="SFT target tokens (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="a toy width on CPU, to check the code path")
    args = p.parse_args()
    device = M.default_device()
    if device == "cpu" and not args.tiny:
        print("skipped: no GPU (the real 3B shapes need one; --tiny checks the code path on CPU)")
        print("skipped=1")
        return
    precision = M.default_precision(device) if not args.tiny else "bf16"  # --tiny: the bf16 path on CPU too
    config = Qwen2_5_VLConfig(**(TINY if args.tiny else QWEN25_VL_3B))
    torch.manual_seed(0)
    with torch.device(device):
        net = Qwen2_5_VLForConditionalGeneration(config).to(M.weights_dtype(precision, trained=False))
    print(f"{'tiny' if args.tiny else 'Qwen2.5-VL-3B'} shapes: {M.count_parameters(net) / 1e9:.2f}B parameters, "
          f"{precision}, {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    figures = {}

    # ---- SFT: one micro-batch forward + backward + AdamW step through LoRA ----
    policy = M.fp32_logits(M.add_lora(net, 16, 32, 0.05))
    policy.gradient_checkpointing_enable({"use_reentrant": False})
    policy.enable_input_require_grads()
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-4)
    batch = prompts(args.micro_batch, args.image_px, args.prompt_text, device)
    ids = torch.randint(0, 150000, (args.micro_batch, args.target), device=device)
    mask = torch.ones_like(ids)

    def sft_step():
        with M.autocast(device, precision):
            loss = -(M.completion_logprobs(policy, batch, ids, mask) * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    sft_step()  # warm-up
    figures["sft_step_s"], figures["sft_peak_gb"] = measure(sft_step)
    print(f"SFT (LoRA, micro-batch {args.micro_batch}, gradient checkpointing): {figures['sft_step_s']:.2f} s, "
          f"peak {figures['sft_peak_gb']:.1f} GiB")

    # ---- GRPO: sample G per prompt, judge self, reference, loss, step (LoRA: reference = adapter off) ----
    class Tok:  # the ids generation needs, without a tokenizer download
        pad_token_id = 151643

        def convert_tokens_to_ids(self, tokens):
            table = {"<|im_end|>": 151645, "<|endoftext|>": 151643, "<|vision_start|>": 151652,
                     "<|vision_end|>": 151653, "<|vision_pad|>": 151654, "<|image_pad|>": 151655,
                     "<|video_pad|>": 151656}
            return [table[t] for t in tokens] if isinstance(tokens, list) else table[tokens]

        def decode(self, ids, **kw):
            return ""

    class Proc:
        tokenizer = Tok()
    grpo_args = train_grpo.parse_args(["--data", "-", "--micro-batch", str(args.micro_batch), "--precision", precision,
                                       "--gradient-checkpointing"])
    for mode in ("lora", "full"):
        if mode == "full":  # π_θ and π_SFT both fp32 weights under autocast, as train_grpo.py runs them
            del opt
            policy = policy.merge_and_unload().float().requires_grad_(True)
            policy.gradient_checkpointing_enable({"use_reentrant": False})
            try:
                reference = copy.deepcopy(policy).requires_grad_(False)
            except torch.OutOfMemoryError:
                print("Con-GRPO (full): π_θ and π_SFT in fp32 do not fit this GPU: use train_grpo.py --fsdp on several")
                break
        else:
            reference = None
        params = [q for q in policy.parameters() if q.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-6)
        sched = run.lr_schedule(opt, 10, 0.0, decay="constant")
        prompt = prompts(args.prompts, args.image_px, args.prompt_text, device)

        def grpo_step():
            policy.eval()
            with M.autocast(device, precision):  # the frozen vision tower once a step, as train_grpo.py runs it
                step_prompt = {**prompt, "image_features": M.image_features(policy, prompt)}
                rollout = sampler.sample(policy, Proc(), step_prompt, group_size=args.group_size,
                                         max_new_tokens=args.max_new_tokens, seed=0)
            judge_model = policy if reference is None else reference
            with torch.no_grad(), M.autocast(device, precision), \
                    (policy.disable_adapter() if reference is None else nullcontext()):
                # the judge's one forward: the question, options and thought, text only (~prompt + thought tokens)
                n = rollout["completion_ids"].shape[0]
                judge_ids = torch.cat([prompt["input_ids"][:1, :args.prompt_text].repeat(n, 1),
                                       rollout["completion_ids"]], 1)
                judge_model(input_ids=judge_ids, logits_to_keep=1)
            rewards = torch.rand(n, device=device)
            adv = train_grpo.group_advantages(rewards, args.group_size)
            policy.train()
            train_grpo.policy_step(policy, reference, opt, sched, params, step_prompt,
                                   rollout["completion_ids"], rollout["completion_mask"], adv, grpo_args)
        try:
            grpo_step()  # warm-up
            figures[f"grpo_{mode}_step_s"], figures[f"grpo_{mode}_peak_gb"] = measure(grpo_step)
        except torch.OutOfMemoryError:
            print(f"Con-GRPO ({mode}): out of GPU memory (full fine-tuning needs train_grpo.py --fsdp on several GPUs)")
            break
        print(f"Con-GRPO ({mode}, {args.prompts} prompts x G={args.group_size} x {args.max_new_tokens} new tokens): "
              f"{figures[f'grpo_{mode}_step_s']:.2f} s, peak {figures[f'grpo_{mode}_peak_gb']:.1f} GiB")
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

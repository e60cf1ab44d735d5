"""The real Qwen2.5-VL-3B architecture (random weights, built from its config values, no download): one SFT step
(LoRA), and at each image size one Con-GRPO step (LoRA, then full fine-tuning), judge self, at the paper's settings in
train_grpo.py's precision regime (--precision bf16: autocast around forward passes, a LoRA's base in bf16, fully
fine-tuned weights and their π_SFT in fp32, the LM head in fp32). Reports seconds, peak memory, and the rollout's
tokens/s against the memory-bandwidth bound (each decode step reads every weight once). Needs a GPU; on CPU it says it
was skipped (--tiny runs the same code at a toy width, to check it). Full fine-tuning of the 3.75B model needs ~75 GB
before activations: on an 80 GB GPU it reports that it does not fit (train_grpo.py --fsdp over several GPUs does).

    python bench/real_shapes.py [--image-px 448 1008] [--micro-batch 8] [--prompts 8] [--max-new-tokens 256]
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
import precision  # noqa: E402
import run  # noqa: E402
import sampler  # noqa: E402
import train_grpo  # noqa: E402
from common import bandwidth  # noqa: E402
from tiny import QWEN25_VL_3B as SHAPES, chat_template, text_ids, token_ids, train_tokenizer  # noqa: E402
from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2_5_VLProcessor  # noqa: E402
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil  # noqa: E402

# A small Qwen tokenizer with the hub's chat template: the processor the sampler reads end tokens and banned tokens
# from; the model keeps the real 151,936-row vocabulary (sampled ids the tokenizer lacks decode to nothing)
TOKENIZER = train_tokenizer(["<think> </think> <answer> </answer> A B C D"], 300)
PROCESSOR = M.image_only(Qwen2_5_VLProcessor)(Qwen2VLImageProcessorPil(), TOKENIZER,
                                              chat_template=chat_template("qwen2.5-vl"))
QWEN25_VL_3B = dict(SHAPES, text_config=dict(SHAPES["text_config"], **text_ids(TOKENIZER)), **token_ids(TOKENIZER))
TINY = dict(QWEN25_VL_3B, text_config=dict(QWEN25_VL_3B["text_config"], hidden_size=64, intermediate_size=128,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                                                             "mrope_section": [2, 3, 3]}),
            vision_config=dict(SHAPES["vision_config"], depth=2, hidden_size=64, intermediate_size=128,
                               num_heads=2, out_hidden_size=64, fullatt_block_indexes=[1]))


def prompts(n, image_px, prompt_text, device):
    """n prompts of one image (image_px², 14-px patches merged 2x2) and prompt_text text tokens, as the processor
    would give them: [text | <|vision_start|> image pads <|vision_end|> | text]."""
    grid = image_px // 14
    n_image = grid * grid // 4
    ids = token_ids(TOKENIZER)
    body = [ids["vision_start_token_id"]] + [ids["image_token_id"]] * n_image + [ids["vision_end_token_id"]]
    text = torch.randint(0, 150000, (n, prompt_text)).tolist()
    ids = torch.tensor([t[:prompt_text // 2] + body + t[prompt_text // 2:] for t in text], device=device)
    mm = (ids == token_ids(TOKENIZER)["image_token_id"]).long()
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "mm_token_type_ids": mm,
            "pixel_values": torch.randn(n * grid * grid, 3 * 2 * 14 * 14, device=device),
            "image_grid_thw": torch.tensor([[1, grid, grid]] * n, device=device)}


def sync():
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def measure(fn):
    sync()
    run.reset_peak_memory()
    t = time.perf_counter()
    fn()
    sync()
    return time.perf_counter() - t, run.peak_memory_gb()


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--micro-batch", type=int, default=8, help="SFT examples / GRPO completions per forward")
    p.add_argument("--prompts", type=int, default=8, help="GRPO prompts per step (paper: 8 x G=8 = 64)")
    p.add_argument("--group-size", type=int, default=8, help="G (paper: 8)")
    p.add_argument("--max-new-tokens", type=int, default=256, help="GRPO completion length (default: %(default)s)")
    p.add_argument("--image-px", type=int, nargs="+", default=[448, 1008], help="image sides, one Con-GRPO step each: "
                   "448 px gives 256 image tokens, 1008 px 1,296 (default: %(default)s)")
    p.add_argument("--prompt-text", type=int, default=120, help="text tokens of a prompt (system, question, options)")
    p.add_argument("--target", type=int, default=200, help="SFT target tokens (default: %(default)s)")
    p.add_argument("--tiny", action="store_true", help="a toy width on CPU, to check the code path")
    args = p.parse_args()
    device = M.default_device()
    if device == "cpu" and not args.tiny:
        print("skipped: no GPU (the real 3B shapes need one; --tiny checks the code path on CPU)")
        print("skipped=1")
        return
    regime = M.default_precision(device) if not args.tiny else "bf16"  # --tiny: the bf16 path on CPU too
    config = Qwen2_5_VLConfig(**(TINY if args.tiny else QWEN25_VL_3B))
    torch.manual_seed(0)
    with torch.device(device):
        net = Qwen2_5_VLForConditionalGeneration(config).to(precision.weights_dtype(regime, trained=False))
    print(f"{'tiny' if args.tiny else 'Qwen2.5-VL-3B'} shapes: {M.count_parameters(net) / 1e9:.2f}B parameters, "
          f"{regime}, {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}")
    figures = {}

    # ---- SFT: one micro-batch forward + backward + AdamW step through LoRA ----
    policy = precision.fp32_logits(M.add_lora(net, 16, 32, 0.05))
    policy.gradient_checkpointing_enable({"use_reentrant": False})
    policy.enable_input_require_grads()
    opt = torch.optim.AdamW([q for q in policy.parameters() if q.requires_grad], lr=1e-4)
    batch = prompts(args.micro_batch, args.image_px[0], args.prompt_text, device)
    ids = torch.randint(0, 150000, (args.micro_batch, args.target), device=device)
    mask = torch.ones_like(ids)

    def sft_step():
        with precision.autocast(device, regime):
            loss = -(M.completion_logprobs(policy, batch, ids, mask) * mask).sum() / mask.sum()
        loss.backward()
        opt.step()
        opt.zero_grad()
    sft_step()  # warm-up
    figures["sft_step_s"], figures["sft_peak_gb"] = measure(sft_step)
    print(f"SFT (LoRA, micro-batch {args.micro_batch}, {args.image_px[0]} px, gradient checkpointing): "
          f"{figures['sft_step_s']:.2f} s, peak {figures['sft_peak_gb']:.1f} GiB")

    # ---- GRPO: sample G per prompt, judge self, reference, loss, step (LoRA: reference = adapter off) ----
    grpo_args = train_grpo.parse_args(["--data", "-", "--micro-batch", str(args.micro_batch), "--precision", regime,
                                       "--gradient-checkpointing"])
    bytes_per_second = bandwidth() if device == "cuda" else None
    if bytes_per_second:
        print(f"bandwidth: {bytes_per_second / 1e12:.2f} TB/s (a device-to-device copy)")
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
        for px in args.image_px:
            prompt = prompts(args.prompts, px, args.prompt_text, device)
            seconds = {}

            def grpo_step():
                policy.eval()
                with precision.autocast(device, regime):  # the frozen vision tower once a step, as train_grpo.py runs it
                    step_prompt = {**prompt, "image_features": M.image_features(policy, prompt)}
                    sync()
                    start = time.perf_counter()
                    rollout = sampler.sample(policy, PROCESSOR, step_prompt, group_size=args.group_size, seed=0,
                                             max_new_tokens=args.max_new_tokens, min_new_tokens=args.max_new_tokens)
                    sync()
                    seconds["sample"] = time.perf_counter() - start
                    seconds["capture"] = rollout["capture_s"]
                judge_model = policy if reference is None else reference
                with torch.no_grad(), precision.autocast(device, regime), \
                        (policy.disable_adapter() if reference is None else nullcontext()):
                    # the judge's one forward: the question, options and thought, text only (~prompt + thought tokens)
                    n = rollout["completion_ids"].shape[0]
                    judge_ids = torch.cat([prompt["input_ids"][:1, :args.prompt_text].repeat(n, 1),
                                           rollout["completion_ids"]], 1)
                    judge_model(input_ids=judge_ids, logits_to_keep=1)
                adv = train_grpo.group_advantages(torch.rand(n, device=device), args.group_size)
                policy.train()
                train_grpo.policy_step(policy, reference, opt, sched, params, step_prompt,
                                       rollout["completion_ids"], rollout["completion_mask"], adv, grpo_args)
            name = f"grpo_{mode}_{px}px"
            try:
                grpo_step()  # warm-up
                figures[f"{name}_step_s"], figures[f"{name}_peak_gb"] = measure(grpo_step)
            except torch.OutOfMemoryError:
                print(f"Con-GRPO ({mode}, {px} px): out of GPU memory (full fine-tuning needs train_grpo.py --fsdp on "
                      "several GPUs)")
                break
            rows = args.prompts * args.group_size
            figures[f"{name}_sample_s"] = seconds["sample"]
            figures[f"{name}_capture_s"] = seconds["capture"]
            figures[f"{name}_tokens_per_s"] = rows * args.max_new_tokens / seconds["sample"]
            line = (f"Con-GRPO ({mode}, {px} px, {prompt['input_ids'].shape[1]}-token prompts, {args.prompts} x "
                    f"G={args.group_size} x {args.max_new_tokens} new tokens): step {figures[f'{name}_step_s']:.2f} s, "
                    f"peak {figures[f'{name}_peak_gb']:.1f} GiB; rollout {seconds['sample']:.2f} s "
                    f"({figures[f'{name}_tokens_per_s']:,.0f} tokens/s, CUDA-graph capture {seconds['capture']:.2f} s)")
            if bytes_per_second:  # each decode step reads every weight once, in bf16 (autocast's casts of fp32 ones)
                bound = rows * bytes_per_second / (2 * M.count_parameters(policy))
                figures[f"{name}_bound_fraction"] = figures[f"{name}_tokens_per_s"] / bound
                line += f", {figures[f'{name}_bound_fraction']:.1%} of the bandwidth bound {bound:,.0f} tokens/s"
            print(line)
    print(" ".join(f"{k}={v:.3f}" for k, v in figures.items()))


if __name__ == "__main__":
    main()

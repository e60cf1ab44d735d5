"""Plot training curves from a metrics JSONL (train_grpo.py or train_sft.py) as a PNG.

    pip install matplotlib      # an optional extra: the training scripts do not need it
    python plot.py grpo_out/metrics.jsonl --out grpo_curves.png
"""
import argparse
import json

GRPO_KEYS = ["reward", "accuracy", "format_rate", "consistency_rate",  # training rollouts, every step
             "eval_accuracy_greedy", "eval_consistency_greedy"]  # held-out questions, every --eval-every steps


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("metrics", help="metrics.jsonl of a run")
    p.add_argument("--out", default="curves.png", help="PNG to write (default: %(default)s)")
    p.add_argument("--keys", nargs="+", default=GRPO_KEYS, help="columns to plot (default: %(default)s)")
    p.add_argument("--smooth", type=int, default=5, help="moving-average window in steps (default: %(default)s)")
    args = p.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("plot.py needs matplotlib: pip install matplotlib")
    rows = [json.loads(line) for line in open(args.metrics)]
    columns = list(dict.fromkeys(k for r in rows for k in r))
    keys = [k for k in args.keys if k in columns]
    if not keys:
        raise SystemExit(f"{args.metrics}: none of {args.keys} is a column; columns: {', '.join(columns)}")
    fig, ax = plt.subplots(figsize=(7, 4))
    for key in keys:
        steps, values = zip(*[(r["step"], r[key]) for r in rows if r.get(key) is not None])
        if key.startswith("eval_"):  # a few held-out points: drawn as they are
            ax.plot(steps, values, "o--", label=key)
            continue
        w = max(1, min(args.smooth, len(values)))
        smooth = [sum(values[max(0, i - w + 1):i + 1]) / len(values[max(0, i - w + 1):i + 1]) for i in range(len(values))]
        line, = ax.plot(steps, smooth, label=key)
        ax.plot(steps, values, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("step")
    ax.set_title(f"{args.metrics} (moving average over {args.smooth} steps)", fontsize=9)
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

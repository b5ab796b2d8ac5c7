"""Markdown table of options_cost_*.jsonl: python docs/results/options/options_cost_table.py FILE..."""
import json
import sys

for path in sys.argv[1:]:
    rows = [json.loads(line) for line in open(path)]
    r0 = rows[0]
    print(f"\n{r0['model']}, {r0['n']} tokens, {r0['ratio']:g}x, text {r0['text']}; prefill {r0['prefill_s']:.1f} s "
          f"({path.split('/')[-1]}, {r0['time'][:16]})\n")
    print("| option | head budgets used | compaction / prefill | queries s | fit s | KL | ΔNLL |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        note = f" (fell back: {r['reason']})" if r["fell_back"] else ""
        used = "shipped" if r["budgets"].endswith(".json") else r["budgets"]
        print(f"| {r['option']}{note} | {used} | {r['over_prefill']:.2f} | {r['seconds']['queries']:.1f} | "
              f"{r['seconds']['fit']:.1f} | {r['kl']:.4f} | {r['dnll']:+.4f} |")

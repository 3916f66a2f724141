"""Issue 10's acceptance check: the demo before the refactor (commit ab11b8b) and after it agree exactly.

    python results/demo-agreement/compare.py OLD_RUN NEW_RUN > results/demo-agreement/agreement.json

Compares, for the same seed: every cache shard's tensor, every saved SAE's tensors (bit for bit; tensors the new
format adds are listed), the training log (byte for byte) and every evaluation number the two results.json have in
common (exact equality).
"""

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def tensors_equal(a: Path, b: Path) -> dict:
    """Every tensor of the old file equals the new file's bit for bit; tensors the new format adds are listed."""
    ta, tb = load_file(a), load_file(b)
    return {"equal": all(k in tb and torch.equal(ta[k], tb[k]) for k in ta), "added_in_new": sorted(set(tb) - set(ta))}


def flat(prefix: str, value, out: dict) -> dict:
    if isinstance(value, dict):
        for k, v in value.items():
            flat(f"{prefix}.{k}" if prefix else str(k), v, out)
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out[prefix] = value
    return out


def main(old: Path, new: Path) -> None:
    report = {"old": str(old), "new": str(new), "shards": {}, "saes": {}, "evals": {}}
    for shard in sorted((old / "cache").glob("*.safetensors")):
        report["shards"][shard.name] = tensors_equal(shard, new / "cache" / shard.name)["equal"]
    for sae_dir in sorted(p for p in (old / "saes").iterdir() if p.is_dir()):
        files = sorted(sae_dir.glob("*.safetensors"))
        report["saes"][sae_dir.name] = {f.name: tensors_equal(f, new / "saes" / sae_dir.name / f.name)
                                        for f in files}
    logs = [(old / "saes" / "train_log.jsonl").read_text(), (new / "saes" / "train_log.jsonl").read_text()]
    report["train_log_identical"] = logs[0] == logs[1]
    old_res = json.loads((old / "report" / "results.json").read_text())["saes"]
    new_res = json.loads((new / "report" / "results.json").read_text())["saes"]
    for name in sorted(old_res):
        a, b = flat("", old_res[name], {}), flat("", new_res.get(name, {}), {})
        common = sorted(set(a) & set(b))
        report["evals"][name] = {"compared": len(common), "differ": [k for k in common if a[k] != b[k]],
                                 "only_old": sorted(set(a) - set(b))}
    ok = (all(report["shards"].values()) and report["shards"]
          and all(v and all(f["equal"] for f in v.values()) for v in report["saes"].values())
          and all(not v["differ"] for v in report["evals"].values()) and report["train_log_identical"])
    report["identical"] = bool(ok)
    print(json.dumps(report, indent=1))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))

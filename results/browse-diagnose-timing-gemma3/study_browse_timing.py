"""Time the study's browse stage (two sites: baseline and a rank-24 hybrid) on Gemma-3-270M layer 9 (command.sh, step 5).

Usage: study_browse_timing.py BROWSE_TOKENS OUT_DIR
"""
import json
import sys
import time
from pathlib import Path
from scaffold_sae.models import load_model
from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.saving import load_sae
from scaffold_sae.study import StudyBrowse, StudyConfig, StudyMember, browse_sites
tokens = int(sys.argv[1])
out = Path(sys.argv[2])
cfg = StudyConfig(browse=StudyBrowse(tokens=tokens))
lm = load_model("gemma3-270m")
contexts = pack_contexts(lm.tokenizer, load_corpus("news"), cfg.harvest.ctx_len, cfg.harvest.eval_tokens, split="heldout", seed=cfg.seed, bos_id=lm.bos_token_id)
dirs = {"base": Path("/tmp/b2/saes/batchtopk_m2048_k32_r0"), "hyb": Path("/tmp/b2/saes24/batchtopk_m2048_k32_r24_resin")}
members = {n: StudyMember("baseline" if n == "base" else "hybrid", 0, load_sae(d).cfg, load_sae(d).cfg.rank) for n, d in dirs.items()}
t = time.perf_counter()
sites = browse_sites(dirs, members, lm, 9, contexts, cfg, out, progress=False)
total = time.perf_counter() - t
metas = {n: json.loads((out / n / "site.json").read_text())["meta"] for n in dirs}
print(json.dumps({"browse_tokens": tokens, "browse_s": round(total, 1), **{n: {"pass_s": m["pass_s"], "elapsed_s": m["elapsed_s"], "n_tokens": m["n_tokens"]} for n, m in metas.items()}}))

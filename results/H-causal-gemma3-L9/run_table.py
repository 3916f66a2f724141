"""Experiment H: the causal ablation table (and optionally the redundancy curve) on the SAEs a study saved.

    PYTHONPATH=src python results/H-causal-gemma3-L9/run_table.py --run runs/H-causal-gemma3-L9 \
        --ce-contexts 40 --out results/H-causal-gemma3-L9

Reads the study's study_config.json and saes/, packs the same held-out contexts as the study (eval_tokens more if
asked), evaluates CE on the first --ce-contexts of them and fits every mean / PCA basis / donor on the rest.
"""

import argparse
import json
import time
from pathlib import Path
from types import SimpleNamespace

import torch

from scaffold_sae.analyses import registered, run_analyses
from scaffold_sae.corpus import load_corpus, pack_contexts
from scaffold_sae.models import load_model
from scaffold_sae.study_report import write_report
from scaffold_sae.saving import load_sae


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--run", required=True, help="study output directory (study_config.json, saes/)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--ce-contexts", type=int, default=40)
    parser.add_argument("--fit-tokens", type=int, default=8192)
    parser.add_argument("--eval-tokens", type=int, default=None, help="held-out tokens to pack (default: study's)")
    parser.add_argument("--analyses", default="structure,ablation_table")
    parser.add_argument("--operators", default="zero,mean,resample")
    parser.add_argument("--positions", default="ordinary,all")
    parser.add_argument("--subjects", default="scaffold,span_u,pca,random,residual")
    parser.add_argument("--splices", default="true", choices=["true", "false"])
    parser.add_argument("--random-bases", type=int, default=5)
    parser.add_argument("--redundancy-points", type=int, default=6)
    parser.add_argument("--bootstrap", type=int, default=2000)
    parser.add_argument("--probe-docs", type=int, default=0,
                        help="documents per probing dataset (with --analyses probing; other probe settings: study's)")
    parser.add_argument("--topic-docs", type=int, default=0,
                        help="documents per topic dataset (with --analyses topic_ablation; default: study's)")
    parser.add_argument("--topic-operators", default=None, help="topic ablation operators (default: study's)")
    parser.add_argument("--topic-positions", default=None, help="topic ablation positions (default: study's)")
    parser.add_argument("--topic-datasets", default=None, help="topic ablation datasets (default: study's)")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    run, out = Path(args.run), Path(args.out)
    study = json.loads((run / "study_config.json").read_text())
    ctx_len = study["ctx_len"]
    cfg = SimpleNamespace(**{**study, "analysis_tokens": args.fit_tokens,
                             "analysis_ce_tokens": args.ce_contexts * ctx_len, "ce_tokens": args.ce_contexts * ctx_len,
                             "ablation_operators": args.operators, "ablation_positions": args.positions,
                             "ablation_random_bases": args.random_bases,
                             "ablation_subjects": args.subjects, "ablation_splices": args.splices == "true", "bootstrap_samples": args.bootstrap,
                             "redundancy_points": args.redundancy_points, "probe_docs": args.probe_docs,
                             "harvest_batch_size": 4,
                             "topic_docs": args.topic_docs or study.get("topic_docs", 200),
                             "topic_operators": args.topic_operators or study.get("topic_operators", "zero,mean"),
                             "topic_positions": args.topic_positions or study.get("topic_positions", "ordinary,all"),
                             "topic_datasets": args.topic_datasets or study.get("topic_datasets", "bbc_topic,language")})
    lm = load_model(study["model"])
    layer = study["layer"]
    contexts = pack_contexts(lm.tokenizer, load_corpus(study["corpus"]), ctx_len,
                             args.eval_tokens or study["eval_tokens"], split="heldout", seed=study["seed"],
                             bos_id=lm.bos_token_id)
    saes = {p.name: load_sae(p) for p in sorted((run / "saes").iterdir()) if (p / "scaffold_sae.json").is_file()}
    baseline = next(n for n, s in saes.items() if s.cfg.rank == 0)
    chosen = {n: a for n, a in registered().items() if n in args.analyses.split(",")}
    clock = time.perf_counter()
    results, sections = run_analyses(lm, layer, saes, baseline, None, contexts, cfg, out=out, progress=True,
                                     analyses=chosen)
    wall = time.perf_counter() - clock
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.json").write_text(json.dumps({"command": vars(args), "wall_s": wall, "contexts": list(contexts.shape),
                                                "analyses": results.to_json()}, indent=1) + "\n")
    write_report({"title": f"Causal ablation table: {study['model']} layer {layer}", "config": vars(args),
                  "saes": {}}, out / "report", sections=sections)
    print(f"done in {wall:.0f} s")


if __name__ == "__main__":
    main()

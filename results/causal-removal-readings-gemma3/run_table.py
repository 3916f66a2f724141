"""The analyses (the causal ablation table by default) on the SAEs a study saved: the command line of
scaffold_sae.saved_analyses.analyse_saved, which the legacy experiments' command.sh scripts call.

    python results/causal-removal-readings-gemma3/run_table.py --run runs/H-causal-gemma3-L9 \
        --ce-contexts 40 --out results/causal-removal-readings-gemma3

Reads the study's study_config.json and saes/, packs the same held-out contexts as the study (eval_tokens more if
asked), evaluates CE on the first --ce-contexts of them and fits every mean / PCA basis / donor on the rest.
"""

import argparse
import json
from pathlib import Path

import torch

from scaffold_sae.saved_analyses import analyse_saved


def settings_of(args: argparse.Namespace, ctx_len: int) -> dict:
    """The flags as keys of the study's config tree."""
    ablation, topic = "analyses.ablation_table.", "analyses.topic_ablation."
    out = {"analyses.tokens": args.fit_tokens, "analyses.ce_tokens": args.ce_contexts * ctx_len,
           "harvest.ce_tokens": args.ce_contexts * ctx_len, "harvest.batch_size": 4,
           "analyses.bootstrap_samples": args.bootstrap, ablation + "ablation_operators": args.operators,
           ablation + "ablation_positions": args.positions, ablation + "ablation_subjects": args.subjects,
           ablation + "ablation_random_bases": args.random_bases, ablation + "ablation_splices": args.splices == "true",
           "analyses.redundancy.redundancy_points": args.redundancy_points,
           "analyses.probing.probe_docs": args.probe_docs}
    for name in ("topic_docs", "topic_operators", "topic_positions", "topic_datasets"):
        if getattr(args, name):
            out[topic + name] = getattr(args, name)
    return out


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
    stored = json.loads((Path(args.run) / "study_config.json").read_text())
    ctx_len = stored["harvest"]["ctx_len"] if "harvest" in stored else stored["ctx_len"]
    analyse_saved(args.run, args.out, args.analyses.split(","), settings_of(args, ctx_len), args.eval_tokens,
                  command=vars(args), title="Causal ablation table")


if __name__ == "__main__":
    main()

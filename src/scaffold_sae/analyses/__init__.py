"""What the scaffold is: one module per analysis (structure, causality, the causal ablation table, redundancy, probing,
the fixed-probe topic analysis, rank selection), each registered with `register` (see base.py); `run_analyses` runs
them all inside the study.

Every statistic uses held-out tokens at the positions lm_passes.eval_mask keeps, and every edit of the residual
stream is applied at those positions only (BOS and sinks keep their original values); CE leaves out the prediction
made at position 0.
"""

from scaffold_sae.analyses.base import (Analysis, AnalysisContext, AnalysisError, SharedConfig, from_json,
                                        primary_hybrid, register, registered, split_contexts, to_json,
                                        unregister)
# importing each analysis module registers it; this order is the run and report order
from scaffold_sae.analyses import (structure, causality, ablation_table, redundancy, probing, topic_ablation,
                                  rank_selection)
from scaffold_sae.analyses.runner import AnalysisResults, run_analyses, sections_from_json

__all__ = ["Analysis", "ablation_table", "AnalysisContext", "AnalysisError", "AnalysisResults", "SharedConfig", "causality",
           "from_json", "primary_hybrid", "probing", "rank_selection", "redundancy", "register", "registered",
           "run_analyses", "sections_from_json", "split_contexts", "structure", "to_json", "topic_ablation", "unregister"]

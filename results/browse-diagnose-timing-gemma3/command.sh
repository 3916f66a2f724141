# Issue 14: `scaffold-sae browse` and `scaffold-sae diagnose` timed once each on the real embedded Gemma-3-270M,
# layer 9, on an SAE trained quickly for the purpose. 2 shared CPU cores (Intel Xeon), every command under
# `nice -n 10`, the machine UNDER LOAD: another engineer's `scaffold-sae demo` and test runs used the same cores
# (load average 3.9 -> 5.2 during browse and diagnose, 6.9 -> 7.6 during step 5). Wall times from /usr/bin/time -v;
# 2026-11-27, commit 0027477 + this branch. The site and the SAE weights are not kept here.
export PYTHONPATH=$PWD/src
PY=.venv/bin/python

# 1. harvest 50k training tokens: 1 min 26 s
/usr/bin/time -v nice -n 10 $PY -m scaffold_sae harvest --model gemma3-270m --layer 9 --tokens 50000 --out /tmp/b2/cache
# 2. a plain BatchTopK SAE, m = 2048, k = 32, 200k tokens (50 steps of 4096): 30 s
/usr/bin/time -v nice -n 10 $PY -m scaffold_sae train --cache /tmp/b2/cache --arch batchtopk --width 2048 --k 32 \
    --ranks 0 --tokens 204800 --batch-size 4096 --out /tmp/b2/saes --no-progress
# 3. browse: 20,480 held-out tokens (20,285 kept): 1 min 24 s wall, of which model load ~18 s, the pass 39.8 s
#    (~510 tokens/s), the logit effects of 2048 latents over Gemma's 262k-token vocabulary and the files 26.5 s
#    (site.json meta: pass_s 39.833, elapsed_s 66.372); 15 MB site. (Measured before logit_effects stopped
#    copying each chunk twice, which took ~10% off the logit-effect step in a separate benchmark.)
/usr/bin/time -v nice -n 10 $PY -m scaffold_sae browse --sae /tmp/b2/saes/batchtopk_m2048_k32_r0 --model gemma3-270m \
    --layer 9 --tokens 20480 --out /tmp/b2/site --no-progress
# 4. diagnose, fit = finetune (the default): 20,480 held-out tokens for the statistics, the SAE fine-tuned without
#    and with a rank-8 scaffold on 40,960 train-split tokens (40 steps of 1024): 2 min 42 s wall (diagnosis.json
#    elapsed_s 143.6 after model load). Output: diagnosis.json, diagnosis.md (here).
/usr/bin/time -v nice -n 10 $PY -m scaffold_sae diagnose --sae /tmp/b2/saes/batchtopk_m2048_k32_r0 \
    --model gemma3-270m --layer 9 --tokens 20480 --rank 8 --train-tokens 40960 --out /tmp/b2/diag --no-progress
# 5. what the study's browse stage adds (StudyConfig.browse, browse_tokens 4096, the demo default): the two sites of
#    a study (the baseline above and a rank-24 residual-encoder hybrid, trained like step 2 with
#    --ranks 24 --encoder-input residual --out /tmp/b2/saes24) through study.browse_sites: 71.8 s at load 6.9-7.6
#    (per site: pass 9.5 / 10.5 s over 4,053 kept tokens, 34.4 / 36.0 s in all; the rest is the logit effects)
nice -n 10 $PY -m scaffold_sae train --cache /tmp/b2/cache --arch batchtopk --width 2048 --k 32 --ranks 24 \
    --encoder-input residual --tokens 204800 --batch-size 4096 --out /tmp/b2/saes24 --no-progress
nice -n 10 $PY results/browse-diagnose-timing-gemma3/study_browse_timing.py 4096 /tmp/b2/sb4096

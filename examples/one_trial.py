# Run: python examples/one_trial.py [OUT_DIR]
"""One trial, in-process, no Ray: the pipeline's steps called by hand.

The same steps `hiersearch search` runs for every trial, on a tiny random-init BERT so that it
finishes in seconds on a CPU. Swap `model="tiny:12x32"` for `"minilm"` (the packaged pretrained
MiniLM-L6) to fine-tune for real.
"""

import sys
import tempfile
from pathlib import Path

from hiersearch.data import SynthConfig, encode, eurovoc_hierarchy, synthesize
from hiersearch.metrics import rp_level_key, rp_macro_key
from hiersearch.model import tokenizer_path
from hiersearch.trial import Artifacts, LocalSession, TrialConfig, fit

out = Path(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="hiersearch-"))

# 1. A SYNTHETIC corpus on the real EuroVoc hierarchy (3 levels), split train/dev/test.
corpus = synthesize(eurovoc_hierarchy(), SynthConfig(docs=60, seed=1, max_leaves=12))

# 2. Tokenize it once into a cached Arrow table with per-level multi-hot targets.
encoded = encode(corpus, tokenizer_path("minilm"), max_length=48, cache_dir=out / "cache")

# 3. The trial's frozen config: the ONE-BY-ONE variant (generalized to 12 layers, 3 levels).
config = TrialConfig(
    model="tiny:12x32", assignment="ONE-BY-ONE", epochs=2, batch_size=8, lr=1e-3, max_length=48
)

# 4. Train in this process: reports stay in memory, checkpoints and artifacts go under out/.
(out / "checkpoints").mkdir(parents=True, exist_ok=True)
session = LocalSession(checkpoint_root=out / "checkpoints")
final = fit(config, encoded, session, Artifacts(str(out / "artifacts")))

# 5. The reporter's metrics: R-Precision per level and macro, on dev and test.
for split in ("dev", "test"):
    levels = [f"L{n}={final[rp_level_key(split, n)]:.3f}" for n in (1, 2, 3)]
    print(f"{split}: macro R-Precision {final[rp_macro_key(split)]:.3f} ({', '.join(levels)})")
print(f"artifacts (heatmaps, TensorBoard, config.json) in {out / 'artifacts'}")

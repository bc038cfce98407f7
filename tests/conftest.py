import os
import sys

import torch

# Triton kernels run on the CPU through the interpreter when there is no GPU. The
# variable must be set before triton (and metakern.triton) is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

sys.path.insert(0, os.path.dirname(__file__))

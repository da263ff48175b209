import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the hub

import torch  # noqa: E402

# Tiny models: one thread is much faster than waking an OpenMP pool for every 16x32 matmul.
torch.set_num_threads(1)

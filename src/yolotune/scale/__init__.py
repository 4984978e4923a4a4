"""Scale-out on Ray (``pip install 'yolotune[ray]'``): predict over a cluster's GPUs or CPUs with Ray Data."""

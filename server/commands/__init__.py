"""What only the command line runs: ``surge ab`` (ab.py), ``surge top`` (top.py) and ``surge batch``'s job
runner (batch.py). The serving modules never import these."""

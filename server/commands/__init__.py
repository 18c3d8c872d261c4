"""What only the command line runs: ``surge top`` (top.py) and ``surge batch``'s job runner (batch.py). The
serving modules never import these. (``surge ab``'s statistics are in traffic/ab.py: the rollout controller
uses them too.)"""

"""Evaluation: retrieval R@k, captioning (CIDEr-D, BLEU, language fidelity), VQA accuracy, reports.

Modules are imported directly (``from eval.retrieval import recall_at_k``) so that scoring VQA does
not pull in torch or matplotlib.
"""

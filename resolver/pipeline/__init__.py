"""The query path: the Query/Reply contract, the chain, and one file per stage.

``chain.py`` lists the stages in the order they run. A stage may import
``resolver.wire``, ``resolver.config``, ``heuristics`` and the contract
(``query``, ``alerts``), never ``operations``, ``offline`` or ``app``.
"""

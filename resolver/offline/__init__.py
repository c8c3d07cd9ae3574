"""Offline tools over captures and learned names: capture reading, replay, propose.

They run the same ``pipeline`` the live server runs, in capture time.
May import ``pipeline``, ``wire`` and ``config``; never ``operations`` or ``app``.
"""

"""The Lab UI: static HTML, CSS and ES modules in ``static/``, served at ``/ui/`` (``server/ui.py``).

No build step and no Python dependency: the pages call the gateway's JSON APIs
(``/v1/models``, ``/v1/chat/completions``, ``/v1/feedback``, ``/admin/*``,
``/health/providers``). See docs/ui.md.
"""

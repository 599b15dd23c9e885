"""CHANGES THINGS: start, stop, restart, fix, clean-cache. Always looks through observe/ first.

Nothing here imports click or rich: results are frozen dataclasses that ``mpsctl.render``
turns into tables or JSON, and failures are ``mpsctl.errors`` exceptions.
"""

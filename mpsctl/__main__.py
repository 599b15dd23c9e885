"""``python -m mpsctl``: the same commands as the ``mpsctl`` script."""

from mpsctl.cli import run

if __name__ == "__main__":
    run()

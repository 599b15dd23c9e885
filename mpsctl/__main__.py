"""``python -m mpsctl``: the same commands as the ``mpsctl`` script."""

from mpsctl.entry import run

if __name__ == "__main__":
    run()

"""READ-ONLY: nothing here changes the machine."""

"""One module per stage: the ``cmd_<name>`` functions that ``fraiseql-cli`` dispatches to."""

"""``jupyter lowcost``: the command line (runs where the user types; talks to a Jupyter
server's REST API, never imports the server's code)."""

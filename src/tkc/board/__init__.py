"""`tkc board`: a JSON API and a small static front end over a workspace of recipes and bundles (docs/BOARD.md)."""

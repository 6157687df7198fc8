"""Reference search: image search providers behind one protocol, and the lookup that uses them."""

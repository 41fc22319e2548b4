"""The offline demo-corpus ("mini-Pile") builder behind tools/build_minipile.py: build.py writes the corpus,
sources.py lists the domains, their registry packages and extractors. A tool, not the training data path."""

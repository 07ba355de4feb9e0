"""The operator's command line: ``keygate serve``, users, keys, signatures."""

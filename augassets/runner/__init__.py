"""The headless runner: ``augassets benchmark`` and ``augassets foundation`` without a daemon.

``command``   ``materialize``: the home's lock, dead runs released, damaged outputs repaired, pending
              partitions resumed, then evaluate and run until nothing is requested
``runs``      what to run (the assets' automation conditions, evaluated with a cursor; the pending
              partitions a killed command leaves) and how (run groups over partition ranges, in
              this process or on worker processes)
``workers``   the worker processes that run a round's partition ranges side by side
``failures``  how a failed or interrupted run reads

The runner sits above the definitions (``build``) and the assets: it imports them, never the other way.
"""

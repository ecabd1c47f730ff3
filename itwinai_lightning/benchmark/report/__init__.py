"""The benchmark's second half: the scalability report, built from RunRecords only (the grid, in the rest of
``benchmark/``, runs the points). :mod:`.table` turns records into rows with the figure vocabulary of
``records/``, :mod:`.scaling` fits the scaling models, :mod:`.findings` says where scaling stops paying,
:mod:`.plots` and :mod:`.html` draw, :mod:`.build` writes the report (:mod:`.data` is what they share)."""

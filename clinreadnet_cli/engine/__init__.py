"""Engines that run the score workflow over many series: ``local`` (decoding processes beside the
model, one machine) and ``ray`` (Ray Data across a cluster), sharing ``base`` (the unit of work,
decoding, the results folder) and ``scoring.score_batch``. ``archive`` is the resumable job
``clinreadnet score-archive`` runs on either."""

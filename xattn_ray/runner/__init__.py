"""The Ray runner: a study's stages as Ray Tune runs (see `study.run_study`)."""

//! luo-sim: the simulated /dev/liveupdate (issue 10).

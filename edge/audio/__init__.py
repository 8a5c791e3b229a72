"""Audio: load/resample (io), silence trimming (vad), YAMNet log-mel patches (features)."""

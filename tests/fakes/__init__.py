"""Fakes of destinations that cannot run here, faithful to their documented protocols."""

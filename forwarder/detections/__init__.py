"""Sigma detections for Aha! audit events: conversion to SIEM queries (needs the `detections` extra)."""

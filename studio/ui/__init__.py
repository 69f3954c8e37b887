"""Shared Gradio builders."""

"""Serving avemo from Triton Inference Server: the repository writer, the Python-backend models
(thin classes over the Recognizer and the graph backends) and the local server launcher."""

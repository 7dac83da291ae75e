"""One pass over media: sources yield timestamped audio and video, windows are cut as they complete.

``sources`` turns a file (later: a network stream, a camera, a microphone) into
``AudioChunk`` and ``VideoFrame`` events in stream time; ``windows`` keeps only
what the open windows need (raw samples, the frames each window's 3-fps ticks
take, face crops) and hands each window's features over as soon as it is
complete. Memory is bounded by the window, not by the media.
"""

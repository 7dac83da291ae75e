"""One pass over media: sources yield timestamped audio and video, windows are cut as they complete.

``sources`` turns a file, ``live`` a network stream or an FFmpeg input (lavfi, alsa, ...) and
``devices`` a camera (with a microphone) into ``AudioChunk`` and ``VideoFrame`` events in stream time
(``readers``: what the live readers' threads share). ``windows`` keeps only what the open windows need
(raw samples, the frames each window's 3-fps ticks take, face crops) and hands each window's features
over as soon as it is complete; ``run`` yields them, ready for the model, and never runs it (the
Recognizer does). Memory is bounded by the window, not by the media. ``loop``, ``summary`` and
``timeline``: what `avemo infer --window` prints and plots.
"""

"""Text to speech: engines behind one interface, and the seeded rule that gives each row its voice.

    base       TTSConfig, VoiceChoice, VoicePlan, the Backend interface, `finish` (16 kHz mono)
    espeak     the espeak-ng engine: the library (espeakng-loader wheel) or the apt binary
    flite      CMU flite (apt flite): natural voices compiled into the program, a process per row
    neural     Kokoro-82M and VITS (transformers) backends, imported only when asked for
    backends   the espeak backend and `make_backend`, which starts the engine a config names

May import: cordlite.audio and data_tools/text/.
Must not be imported by: data_tools/text/ or sources.py.
"""

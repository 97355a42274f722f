"""Speakable text: what a TTS engine should say for a written question.

    number_words   numbers, decimals, fractions, ordinals as words
    latex_words    LaTeX and math notation as words
    speakable      one question -> the sentence to voice
    speaks_well    which rows are worth voicing (length, leftover symbols)

May import: nothing outside data_tools/text/ (pure text functions).
Must not be imported by: nothing; the lowest part of data_tools.
"""

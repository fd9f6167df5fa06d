"""Captions: a vision-language model describes each photo, given a reference photo of the person first."""

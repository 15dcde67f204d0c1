"""A small built-in English corpus for training the tiny offline tokenizer.

Deterministic: the same text every time, so the same vocabulary and ids every
time ``make_model`` runs.
"""

from __future__ import annotations

_BASE = """\
You are a helpful assistant. Describe the image in detail.
What is shown in this picture? Please answer the question about the video.
The quick brown fox jumps over the lazy dog. A picture is worth a thousand words.
Listen to the audio clip and tell me what you hear. What sound is that?
The cat sat on the mat while the dog slept by the door.
There is a red car parked next to a tall building on a sunny day.
A group of people are walking along the beach at sunset.
The chart shows the number of requests per second for each worker.
Summarize the document and list the main points in order.
How many objects are in the scene? Count them one by one.
The video shows a person riding a bicycle through the park.
Read the text in the image and translate it into English.
Is there anything unusual about this photo? Explain your answer.
The weather today is cloudy with a chance of rain in the afternoon.
Compare the two images and describe the differences between them.
The model processes images, videos and audio before the language model sees them.
Please write a short story about a robot who learns to paint.
What time is it on the clock in the picture? It is ten past three.
The music in the recording is slow and calm, played on a piano.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100 1000 2024 3.14 1080 1920 360 640 480.
Punctuation, quotes "like this", (parentheses), [brackets], {braces}: colons; semi-colons!
user assistant system question answer image video audio frame frames token tokens.
"""

_WORDS = (
    "the a an of to in on for with and or but is are was were be been this that these those it they we you "
    "he she his her their our my your what which who where when why how all any some many much more most "
    "image video audio picture photo frame scene person people car dog cat tree house street city sky water "
    "red green blue yellow black white small large big little left right top bottom first second last next "
    "describe explain answer question show tell list count read write translate summarize compare find "
    "good bad new old long short high low fast slow early late open close start stop run walk look see hear"
).split()

_STEMS = (
    "play work talk jump paint climb cook clean watch listen answer ask call help move turn follow visit wait "
    "walk learn open point print process render sample decode encode resize crop load store request return "
    "report measure count label mark train test check build train handle stream fetch cache match align expand "
    "connect cover park fill pull push pass rest show start stop laugh smile dance travel wander finish reach "
    "kind quick bright dark warm cold soft hard loud quiet clear deep rich calm sharp smooth strong weak heavy "
    "light thick thin wide narrow fresh clean rough sweet young great small tall short near far"
).split()

_PROSE = """In the morning the market opens early, and the streets fill with farmers selling vegetables, bread, cheese and
flowers. Children run between the stalls while their parents compare prices and talk with neighbours.
The river flows slowly through the valley, past old stone bridges, quiet villages and green fields of wheat.
Scientists measure the temperature of the ocean every year to understand how the climate is changing.
A computer program reads the input, transforms the data, and writes the result to a file on the disk.
The library has thousands of books about history, geography, mathematics, physics, chemistry and biology.
Mountains rise above the clouds, their peaks covered with snow even during the warmest months of summer.
The orchestra played a symphony with violins, cellos, flutes, trumpets, drums and a grand piano.
Engineers designed a bridge that could survive strong winds, heavy traffic and earthquakes.
Birds migrate south in autumn, flying thousands of kilometres to find food and warmer weather.
The restaurant serves soup, salad, pasta, grilled fish, roasted chicken, rice and chocolate cake.
Video frames are sampled at two frames per second, resized, normalized and grouped into patches.
Audio is resampled to sixteen kilohertz, converted to a log mel spectrogram and padded to thirty seconds.
Every request carries a prompt, a list of images, a list of videos and sometimes a list of audio clips.
The museum displays paintings, sculptures, ancient coins, maps, letters and photographs from many countries.
Yesterday it rained heavily, but today the sun is shining and the garden smells of roses and fresh grass.
"""


def corpus_lines() -> list[str]:
    """The corpus as a list of lines (about 40 KB of text)."""
    lines = _BASE.splitlines() + _PROSE.splitlines()
    for i, stem in enumerate(_STEMS):
        base = stem[:-1] if stem.endswith("e") else stem
        forms = [stem, stem + "s", base + "ing", base + "ed", stem + "er", stem + "ly"]
        lines.append(f"They {forms[i % 6]} and {forms[(i + 1) % 6]}; we {forms[(i + 2) % 6]} {forms[(i + 3) % 6]}.")
        lines.append(" ".join(forms).capitalize() + ".")
    n = len(_WORDS)
    # Deterministic pseudo-sentences widen the vocabulary without randomness.
    for i in range(600):
        words = [_WORDS[(i * 7 + j * 13 + (i // 5) * j) % n] for j in range(6 + i % 9)]
        sentence = " ".join(words)
        lines.append(sentence[0].upper() + sentence[1:] + ("?" if i % 4 == 0 else "."))
    return lines

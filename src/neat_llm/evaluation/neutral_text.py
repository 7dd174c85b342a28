"""Plain, neutral, everyday English sentences for the perplexity check (written for this package)."""

from __future__ import annotations

NEUTRAL_TEXTS: tuple[str, ...] = (
    "The train to the city leaves every morning at half past seven.",
    "She put the groceries on the kitchen table and opened the window.",
    "Our neighbours planted tomatoes and beans in their small garden this spring.",
    "The library is closed on Sundays but opens early on Monday.",
    "He forgot his umbrella at the office, so he walked home in the rain.",
    "A cup of tea and a slice of toast is a simple way to start the day.",
    "The children built a sandcastle near the water and watched the waves.",
    "Please remember to turn off the lights when you leave the room.",
    "The museum has a new exhibition about the history of clocks.",
    "We met for lunch at a quiet cafe on the corner of the street.",
    "The bus was late this afternoon because of roadworks near the bridge.",
    "My grandmother keeps her old letters in a wooden box under the bed.",
    "The recipe calls for two eggs, a cup of flour and a little butter.",
    "After dinner they usually take a short walk around the park.",
    "The shop on the main street sells newspapers, stamps and postcards.",
    "He spent the weekend painting the fence behind the house.",
    "The meeting has been moved from Tuesday to Thursday afternoon.",
    "A small boat drifted slowly across the lake in the evening light.",
    "She likes to read a chapter of her book before going to sleep.",
    "The weather forecast says it will be sunny and mild tomorrow.",
    "They bought a second-hand bicycle and fixed the brakes themselves.",
    "The baker opens his shop before sunrise to prepare fresh bread.",
    "Our flight was smooth, and we landed a few minutes ahead of schedule.",
    "The teacher asked the students to write a short story about their holidays.",
    "There is a farmers' market in the town square every Saturday morning.",
    "He keeps a notebook in his pocket to write down ideas during the day.",
    "The cat slept on the windowsill while the sun warmed the room.",
    "We need to buy new batteries for the remote control.",
    "The hotel room had a view of the harbour and the old lighthouse.",
    "At the end of the day, she watered the plants on the balcony.",
)

# Plain everyday Hindi sentences (written for this package), for the perplexity check of Hindi studies.
NEUTRAL_TEXTS_HI: tuple[str, ...] = (
    "आज सुबह से हल्की बारिश हो रही है।",
    "मेरी दादी हर शाम बगीचे में टहलती हैं।",
    "बाज़ार से सब्ज़ियाँ और दूध लाना है।",
    "पुस्तकालय रविवार को बंद रहता है।",
    "बच्चे स्कूल के बाद मैदान में खेलते हैं।",
    "रेलगाड़ी सात बजे स्टेशन से निकलती है।",
    "उसने चाय बनाई और खिड़की खोल दी।",
    "हमारे पड़ोसी ने छत पर फूल लगाए हैं।",
    "कल मौसम साफ़ और धूप वाला रहेगा।",
    "शिक्षक ने बच्चों को एक कहानी सुनाई।",
    "दुकान सुबह नौ बजे खुलती है।",
    "हम रात के खाने के बाद थोड़ी देर घूमने गए।",
)

NEUTRAL_BY_LANG = {"en": NEUTRAL_TEXTS, "hi": NEUTRAL_TEXTS_HI}

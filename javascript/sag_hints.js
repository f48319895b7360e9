// Hover hints for the Self-Attention Guidance panel. The webui's hints.js looks labels up in `titles`
// (and translates them through the active localization), so every label of the panel has an entry.
(function() {
    const hints = {
        "Self-Attention Guidance": "Guide each step away from a blurred copy of the image where the model attends most: crisper structure, fewer artifacts. Costs one extra UNet pass per step.",
        "SAG scale": "Strength of the guidance; 0 is off. 0.3-0.75 suits most SD1/SD2 models, 0.2-0.5 SDXL. Negative values push the other way.",
        "SAG blur sigma": "Gaussian blur of the degraded copy, in latent pixels (9 taps). 0 means no blur, and so no effect; 1-3 is typical.",
        "SAG threshold": "Latent positions that receive more self-attention than this are blurred; 1.0 is exactly the average.",
        "SAG start": "Where in each pass's schedule SAG starts, as a fraction of the steps (0 = first step).",
        "SAG end": "Where in each pass's schedule SAG stops, as a fraction of the steps (1 = last step). Steps outside start-end cost nothing.",
        "SAG hires pass": "Hires fix second pass: same SAG as the first pass, off, or its own scale (SAG hires scale).",
        "SAG hires scale": "SAG scale of the hires fix second pass when \"SAG hires pass\" is \"own\".",
    };
    if (typeof titles === "undefined") {
        return;
    }
    Object.assign(titles, hints);
})();

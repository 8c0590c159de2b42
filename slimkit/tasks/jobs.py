"""`jobs`: query / job-posting relevance with yes/no labels, in the shape of semantic job search.

A query names a title, a place and two skills; a posting names a title, a place, a company and its
skills among realistic filler (benefits, culture, process) that a context compressor could drop, in
one of three layouts (`LAYOUTS`): the fields first as a header, the field lines scattered among the
filler lines, or prose that states the fields inside sentences. Only the first puts what matters in
the first tokens, so the other two are the ones on which context compression is measured.
The label is "yes" exactly when the posting's title and place both match the query's. Negatives
differ in the title, the place, or both (hard negatives share the other field and the skills).
"""

from __future__ import annotations

import random

from slimkit.tasks.base import Example, Task, TaskError

# How query and posting are joined into the user prompt. The query comes first so that a scorer can
# prefill the shared part once; the posting starts after a newline so it tokenizes the same alone.
TEMPLATE = "Query:\n{query}\nPosting:\n{item}\nIs the posting relevant to the query? Answer yes or no."
LABELS = ("yes", "no")

TITLES = {
    "data engineer": ["python", "sql", "spark", "airflow", "kafka"],
    "backend developer": ["java", "go", "postgres", "docker", "kubernetes"],
    "frontend developer": ["javascript", "react", "css", "typescript", "figma"],
    "machine learning engineer": ["python", "pytorch", "statistics", "docker", "sql"],
    "nurse": ["patient care", "first aid", "night shifts", "medication", "teamwork"],
    "accountant": ["excel", "bookkeeping", "tax law", "sap", "audits"],
    "sales manager": ["negotiation", "crm", "b2b sales", "forecasting", "english"],
    "graphic designer": ["photoshop", "illustrator", "figma", "typography", "branding"],
    "electrician": ["wiring", "safety rules", "maintenance", "blueprints", "driving licence"],
    "chef": ["french cuisine", "menu planning", "food safety", "pastry", "team leading"],
    "teacher": ["mathematics", "classroom management", "english", "lesson planning", "patience"],
    "product manager": ["roadmaps", "user research", "sql", "agile", "stakeholder management"],
}
PLACES = ["Berlin", "Paris", "London", "Madrid", "Rome", "Vienna", "Warsaw", "Lisbon", "Dublin", "Oslo",
          "Prague", "Zurich"]
COMPANIES = ["Acme", "Globex", "Initech", "Umbrella", "Stark Industries", "Hooli", "Vandelay", "Wonka",
             "Cyberdyne", "Soylent", "Tyrell", "Wayne Enterprises", "Aperture", "Massive Dynamic"]
FILLER = [
    "We are a fast-growing company with a friendly and international team.",
    "We offer flexible working hours and the option to work from home two days a week.",
    "Our office is close to public transport and has a bright kitchen with free coffee.",
    "You will get thirty days of paid holiday and a yearly learning budget.",
    "We value diversity and welcome applications from all backgrounds.",
    "The hiring process has two interviews and a short practical task.",
    "Our customers range from small shops to large international brands.",
    "We have been in business for more than twenty years and keep growing every year.",
    "You will join a team of motivated people who like to share what they know.",
    "We care about a healthy work-life balance and sustainable growth.",
    "A company pension plan and a public transport ticket are part of the package.",
    "Regular team events and a summer party are part of our culture.",
    "You will report to the head of the department and work closely with other teams.",
    "Please send your CV and a short cover letter through our careers page.",
    "We are looking forward to hearing from you and will answer every application.",
    "Our mission is to make everyday work simpler for thousands of people.",
    "New colleagues get a mentor and a structured onboarding in their first weeks.",
    "The salary is competitive and depends on your experience.",
    "We use modern tools and keep our processes lean and transparent.",
    "Good communication skills and a sense of humour are a plus.",
    "The position is full time and the contract is permanent.",
    "Free fruit, a gym subsidy and bike leasing are available to all staff.",
]


def make_query(title: str, place: str, skills: list[str]) -> str:
    return f"title: {title}\nplace: {place}\nskills: {', '.join(skills)}"


LAYOUTS = ("header", "scattered", "prose")
# Weights of the negatives that differ in the title only, the place only, or both: mostly one field,
# so that each comparison has to be learned on its own (one matching field is not a "yes").
NEGATIVE_KINDS = (0.45, 0.45, 0.1)

# Prose sentences that carry the fields; each layout of a posting draws one of each kind.
PROSE_TITLE = [
    "We are hiring {a_title} to join our team in {place}.",
    "{company} is looking for an experienced {title} for its {place} office.",
    "Our {place} branch needs {a_title} as soon as possible.",
    "As our new {title} you will work from our office in {place}.",
    "Join us in {place} as {a_title} and grow with a strong team.",
]
PROSE_COMPANY = [
    "{company} has grown steadily over the last few years.",
    "At {company} we build products that people use every day.",
    "{company} is a family business with a long history.",
]
PROSE_SKILLS = [
    "You bring {skills}.",
    "The role asks for {skills}.",
    "We expect good knowledge of {skills}.",
]


def _skills_text(skills: list[str]) -> str:
    return ", ".join(skills[:-1]) + " and " + skills[-1]


FILLER_LINES = (4, 7)  # fewest and most filler sentences in a posting


def make_posting(rng: random.Random, title: str, place: str, skills: list[str], layout: str = "header",
                 filler_lines: tuple[int, int] = FILLER_LINES) -> str:
    """A posting in one of `LAYOUTS`: `header` puts the field lines first (as job boards render a
    posting's header) and the filler after them; `scattered` shuffles the same field lines among
    filler lines; `prose` states the fields inside sentences placed at random among the filler."""
    company = rng.choice(COMPANIES)
    filler = rng.sample(FILLER, rng.randint(*filler_lines))
    if layout == "header":
        return "\n".join([f"title: {title}", f"place: {place}", f"company: {company}",
                          f"requirements: {', '.join(skills)}", " ".join(filler)])
    if layout == "scattered":
        lines = [f"title: {title}", f"place: {place}", f"company: {company}",
                 f"requirements: {', '.join(skills)}"]
        rng.shuffle(lines)
        out = list(filler)
        for line in lines:
            out.insert(rng.randint(0, len(out)), line)
        return "\n".join(out)
    if layout == "prose":
        article = "an" if title[0] in "aeiou" else "a"
        fields = {"title": title, "a_title": f"{article} {title}", "place": place, "company": company, "skills": _skills_text(skills)}
        sentences = [rng.choice(PROSE_TITLE), rng.choice(PROSE_COMPANY), rng.choice(PROSE_SKILLS)]
        out = list(filler)
        for sentence in sentences:
            out.insert(rng.randint(0, len(out)), sentence.format(**fields))
        return " ".join(out)
    raise TaskError(f"unknown jobs layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


class Jobs(Task):
    name = "jobs"
    default_sizes = {"train": 20000, "validation": 400, "test": 600}

    def __init__(self, filler_lines: tuple[int, int] = FILLER_LINES):
        """`filler_lines` other than the default makes a training variant (e.g. short postings for an
        early curriculum phase); evaluation always uses the default task."""
        self.filler_lines = filler_lines

    def _sample(self, rng: random.Random) -> tuple[str, Example]:
        q_title = rng.choice(sorted(TITLES))
        q_place = rng.choice(PLACES)
        q_skills = rng.sample(TITLES[q_title], 2)
        label = rng.random() < 0.5
        p_title, p_place = q_title, q_place
        if not label:
            kind = rng.choices(("title", "place", "both"), weights=NEGATIVE_KINDS)[0]
            if kind in ("title", "both"):
                p_title = rng.choice([t for t in sorted(TITLES) if t != q_title])
            if kind in ("place", "both"):
                p_place = rng.choice([p for p in PLACES if p != q_place])
        p_skills = rng.sample(TITLES[p_title] if rng.random() < 0.8 else TITLES[q_title], 3)
        query = make_query(q_title, q_place, q_skills)
        layout = rng.choice(LAYOUTS)
        posting = make_posting(rng, p_title, p_place, p_skills, layout, self.filler_lines)
        answer = "yes" if label else "no"
        meta = {"query": query, "posting": posting, "label": int(label), "layout": layout,
                "posting_title": p_title, "posting_place": p_place}
        return f"{query}|{posting}", Example(prompt=TEMPLATE.format(query=query, item=posting), answer=answer,
                                             meta=meta)

    def verify(self, example: Example, completion: str) -> bool:
        words = completion.strip().split()
        return bool(words) and words[0].strip(".,!").lower() == example.answer.strip().lower()


def vocabulary() -> list[str]:
    """The task's content words (titles, places, skills, companies), for training a tokenizer."""
    skills = sorted({s for v in TITLES.values() for s in v})
    return [*TITLES, *PLACES, *skills, *COMPANIES]

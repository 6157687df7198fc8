-- Per-user @tags: "put @sarah in this red dress" resolves `sarah` to the image the user saved.
CREATE TABLE user_references (
    user_id TEXT NOT NULL,
    tag TEXT NOT NULL,                 -- lower-case, without '@'
    image_url TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, tag)
);

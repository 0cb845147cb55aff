-- TRUNCATE fires no row trigger: emptying `transactions` (make demo's reset, a user starting over) would
-- leave every key claimed in `transactions_keys` (0005), and the same records sent again would all be
-- quarantined as duplicates. A statement trigger empties the registry with the table.

CREATE FUNCTION transactions_release_all_keys() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    -- a TRUNCATE naming both tables has emptied the registry already (and holds it: truncating it
    -- again inside that statement is refused)
    IF EXISTS (SELECT 1 FROM transactions_keys) THEN
        TRUNCATE transactions_keys;
    END IF;
    RETURN NULL;
END
$$;

CREATE TRIGGER transactions_release_all_keys AFTER TRUNCATE ON transactions
    FOR EACH STATEMENT EXECUTE FUNCTION transactions_release_all_keys();

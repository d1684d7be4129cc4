//! `#[liveupdate_handler(...)]` on a handler struct: implements `HandlerAbi`, builds one
//! generated `liveupdate_file_ops` table and one `liveupdate_file_handler` per version
//! (the version written, then each version read), the trampolines, the handler-scoped
//! state's `liveupdate_fh_global_state_ops`, the readers of older versions, and the feature
//! negotiation of a feature-negotiated ABI.

use proc_macro2::{Span, TokenStream};
use quote::{format_ident, quote, quote_spanned};
use syn::{Ident, Item, LitStr, Path};

use syn::spanned::Spanned;

use crate::args::{self, Arg, ArgValue};
use crate::common::{self, assert_impl, check_compat, path_version, split_version, with_version};
use crate::diag::Errors;
use crate::vtable::VtableSpec;

const ATTR: &str = "#[liveupdate_handler(...)]";

/// `LIVEUPDATE_DEPENDS_MAX` of `linux/liveupdate.h` (this crate cannot depend on the
/// generated one).
const LIVEUPDATE_DEPENDS_MAX: usize = 8;

const KEYS: &[&str] = &[
    "compatible",
    "name",
    "abi",
    "reads",
    "state",
    "flbs",
    "subsystems",
    "features",
    "active",
    "depends_on",
];

/// The impl side: `impl FileHandler for X`.
pub const IMPL: VtableSpec = VtableSpec {
    attr: "#[liveupdate_handler]",
    trait_name: "FileHandler",
    table: "liveupdate_file_ops",
    required: &[
        (
            "can_preserve",
            "fn can_preserve(&self, file: &dyn File) -> bool",
        ),
        (
            "preserve",
            "fn preserve(&self, cx: &Ctx<'_, Self>, file: &dyn File) -> Result<(Self::Ser, Self::Private)>",
        ),
        (
            "unpreserve",
            "fn unpreserve(&self, cx: &Ctx<'_, Self>, file: &dyn File, ser: Self::Ser, private: Self::Private)",
        ),
        (
            "retrieve",
            "fn retrieve(&self, cx: &Ctx<'_, Self>, data: Self::Read) -> Result<FileRef>",
        ),
        (
            "finish",
            "fn finish(&self, cx: &Ctx<'_, Self>, how: Finish<'_, Self::Read>)",
        ),
    ],
    optional: &["freeze", "unfreeze", "can_finish", "get_id"],
    has_consts: &[
        "can_preserve",
        "preserve",
        "unpreserve",
        "freeze",
        "unfreeze",
        "retrieve",
        "can_finish",
        "finish",
        "get_id",
    ],
    use_const: "USE_LIVEUPDATE_HANDLER_ATTR",
    type_defaults: &[("Private", "()")],
};

struct FeatureModel {
    name: Ident,
    bit: u32,
    fields: Vec<Ident>,
    required: bool,
}

struct Model {
    ident: Ident,
    compat: Option<LitStr>,
    versionless: bool,
    abi: Option<Path>,
    reads: Vec<(LitStr, Path)>,
    state: Option<Path>,
    flbs: Vec<Path>,
    subsystems: Vec<Path>,
    features: Vec<FeatureModel>,
    active: Option<Vec<Ident>>,
    /// Compatible strings of the handlers whose files this handler's files may depend on.
    depends_on: Vec<LitStr>,
}

/// Expands the struct attribute.
pub fn expand_struct(args: TokenStream, item: Item) -> TokenStream {
    let mut errors = Errors::new();
    let Some(s) = common::expect_struct(&item, ATTR, &mut errors) else {
        let e = errors.to_compile_errors();
        return quote!(#item #e);
    };
    let raw_args = match args::parse_args(args) {
        Ok(a) => a,
        Err(e) => {
            errors.push(e);
            Vec::new()
        }
    };
    let args = args::check_keys(raw_args, KEYS, ATTR, &mut errors);
    let model = build_model(&s.ident, args, &mut errors);
    let body = if errors.is_empty() {
        generate(&model)
    } else {
        fallback(&model)
    };
    let errs = errors.to_compile_errors();
    quote! {
        #s
        #errs
        #body
    }
}

fn build_model(ident: &Ident, args: Vec<Arg>, errors: &mut Errors) -> Model {
    let mut m = Model {
        ident: ident.clone(),
        compat: None,
        versionless: false,
        abi: None,
        reads: Vec::new(),
        state: None,
        flbs: Vec::new(),
        subsystems: Vec::new(),
        features: Vec::new(),
        active: None,
        depends_on: Vec::new(),
    };
    let mut name_lit = None;
    let mut reads_lits = Vec::new();
    let mut features_span = None;
    let given = |k: &str| args.iter().any(|a| a.key == k);
    let (compat_given, name_given, abi_given) = (given("compatible"), given("name"), given("abi"));
    for a in &args {
        match a.key.to_string().as_str() {
            "compatible" => m.compat = args::lit_str(a, errors),
            "name" => name_lit = args::lit_str(a, errors).map(|l| (l, a.key.span())),
            "abi" => m.abi = args::path(a, errors),
            "reads" => reads_lits = args::str_array(a, errors),
            "state" => m.state = args::path(a, errors),
            "flbs" => m.flbs = args::path_array(a, errors),
            "subsystems" => m.subsystems = args::path_array(a, errors),
            "features" => {
                features_span = Some(a.key.span());
                m.features = parse_features(a, errors);
            }
            "active" => m.active = Some(args::ident_array(a, errors)),
            "depends_on" => m.depends_on = args::str_array(a, errors),
            _ => {}
        }
    }

    match (&m.compat, name_lit) {
        (Some(_), Some((_, span))) => errors.at(
            span,
            "give either `compatible = \"name-vN\"` (exact-match versioning) or `name = \"...\"` (a versionless name with `features(...)`), not both",
        ),
        (None, Some((l, _))) => {
            m.compat = Some(l);
            m.versionless = true;
        }
        (None, None) if !compat_given && !name_given => errors.at(
            Span::call_site(),
            format!("{ATTR} needs `compatible = \"name-vN\"`: the string written to luo_file_ser.compatible and matched by the next kernel"),
        ),
        _ => {}
    }
    if let Some(c) = &m.compat {
        let what = if m.versionless {
            "the handler name"
        } else {
            "the compatible string"
        };
        check_compat(c, what, Some("liveupdate_file_handler.compatible"), errors);
    }
    for d in &m.depends_on {
        check_compat(
            d,
            "a `depends_on` entry",
            Some("liveupdate_file_handler.depends_on"),
            errors,
        );
    }
    if m.depends_on.len() > LIVEUPDATE_DEPENDS_MAX {
        errors.spanned(
            &m.depends_on[LIVEUPDATE_DEPENDS_MAX],
            format!("a handler may depend on at most {LIVEUPDATE_DEPENDS_MAX} handlers (LIVEUPDATE_DEPENDS_MAX); merge the dependencies or drop this one"),
        );
    }
    if m.abi.is_none() && !abi_given {
        errors.at(
            Span::call_site(),
            format!("{ATTR} needs `abi = path::to::Type`: the ABI struct the handler hands over (for example luo_generated::memfd::v2::memfd_luo_ser)"),
        );
    }

    // The version the compatible string names must be the one the ABI type is from.
    let written = m
        .compat
        .as_ref()
        .filter(|_| !m.versionless)
        .and_then(|c| split_version(&c.value()).map(|(b, n)| (b.to_string(), n)));
    if let (Some((base, n)), Some(abi)) = (&written, &m.abi) {
        if let Some((_, pv)) = path_version(abi) {
            if pv != *n {
                errors.spanned(
                    abi,
                    format!(
                        "the ABI type is from version `v{pv}`, but the compatible string `{base}-v{n}` names version `v{n}`; use the `v{n}` type or compatible = \"{base}-v{pv}\""
                    ),
                );
            }
        }
    }

    // Versions read. A feature-negotiated handler (`name = "memfd"`) came after the
    // exact-match versions of the same name (`memfd-v1`, `memfd-v2`): it may read any of them,
    // each from the `vN` module beside the one of its own ABI (`...::next::T` → `...::v2::T`).
    let mut seen_reads: Vec<String> = Vec::new();
    for r in reads_lits {
        let v = r.value();
        if seen_reads.contains(&v) {
            errors.spanned(&r, format!("version `{v}` is listed twice in `reads`"));
            continue;
        }
        seen_reads.push(v.clone());
        let (base, n) = match (&written, &m.compat) {
            (Some((base, n)), _) => (base.clone(), Some(*n)),
            (None, Some(name)) if m.versionless => (name.value(), None),
            (None, _) => {
                if m.compat.is_some() {
                    errors.spanned(
                        &r,
                        "`reads` needs a compatible string of the form `name-vN` to order versions",
                    );
                }
                continue;
            }
        };
        let Some((rbase, rn)) = split_version(&v) else {
            let hint = match n {
                Some(n) => format!("`{base}-vN` with N below {n}"),
                None => format!("`{base}-vN`, the exact-match versions before `{base}`"),
            };
            errors.spanned(
                &r,
                format!("unknown version `{v}`: versions read are compatible strings of this handler, {hint}"),
            );
            continue;
        };
        if rbase != base {
            let own = match n {
                Some(n) => format!("the compatible string is `{base}-v{n}`"),
                None => format!("the handler's name is `{base}`"),
            };
            errors.spanned(
                &r,
                format!("unknown version `{v}`: it is not a version of `{base}` ({own})"),
            );
            continue;
        }
        if let Some(n) = n {
            if rn >= n {
                errors.spanned(
                    &r,
                    format!("`{v}` is not older than the version written (`{base}-v{n}`); a handler reads only older versions, list only `{base}-vN` with N < {n}"),
                );
                continue;
            }
        }
        let Some(abi) = &m.abi else { continue };
        let idx = match (path_version(abi), m.versionless) {
            (Some((idx, _)), _) => idx,
            // `...::next::T`: the module holding the type stands for the version.
            (None, true) if abi.segments.len() >= 2 => abi.segments.len() - 2,
            _ => {
                errors.spanned(
                    abi,
                    "`reads` finds each older ABI type next to this one, so `abi` must name its version module (`...::v2::Type`)",
                );
                continue;
            }
        };
        m.reads
            .push((r.clone(), with_version(abi, idx, rn, r.span())));
    }

    // Feature negotiation.
    if m.versionless && features_span.is_none() {
        errors.at(
            Span::call_site(),
            "a versionless `name = ...` needs `features(...)`: declare the feature bits the handler knows, e.g. features(SEALS(bit = 0, fields = [seals]))",
        );
    }
    if let (Some(span), false) = (features_span, m.versionless) {
        errors.at(
            span,
            "`features(...)` belong to a feature-negotiated ABI, whose handler has a versionless `name = \"...\"` instead of `compatible`",
        );
    }
    if let Some(active) = &m.active {
        for a in active {
            if !m.features.iter().any(|f| f.name == *a) {
                errors.spanned(
                    a,
                    format!("`{a}` is not a feature declared in `features(...)`"),
                );
            }
        }
    }
    let mut seen: Vec<(String, u32)> = Vec::new();
    for f in &m.features {
        if let Some((n, _)) = seen.iter().find(|(n, _)| f.name == n) {
            errors.spanned(&f.name, format!("feature `{n}` is declared twice"));
        } else if let Some((n, _)) = seen.iter().find(|(_, b)| *b == f.bit) {
            errors.spanned(
                &f.name,
                format!(
                    "feature `{}` uses bit {} like `{n}`; each feature needs its own bit",
                    f.name, f.bit
                ),
            );
        }
        seen.push((f.name.to_string(), f.bit));
    }

    let mut seen_globals: Vec<String> = Vec::new();
    let mut dedup = |list: &mut Vec<Path>, errors: &mut Errors| {
        list.retain(|p| {
            let k = quote!(#p).to_string();
            if seen_globals.contains(&k) {
                errors.spanned(p, "this global state is linked twice; list it once");
                return false;
            }
            seen_globals.push(k);
            true
        });
    };
    dedup(&mut m.flbs, errors);
    dedup(&mut m.subsystems, errors);
    m
}

fn parse_features(a: &Arg, errors: &mut Errors) -> Vec<FeatureModel> {
    let ArgValue::List(t) = &a.value else {
        errors.at(
            args::value_span(a),
            "`features` takes a list: features(NAME(bit = N, fields = [field, ...], required), ...)",
        );
        return Vec::new();
    };
    let list = match args::parse_args(t.clone()) {
        Ok(l) => l,
        Err(e) => {
            errors.push(e);
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for f in list {
        let ArgValue::List(inner) = &f.value else {
            errors.at(
                f.key.span(),
                format!(
                    "feature `{}` needs its bit: {}(bit = N, fields = [...])",
                    f.key, f.key
                ),
            );
            continue;
        };
        let inner = match args::parse_args(inner.clone()) {
            Ok(l) => args::check_keys(
                l,
                &["bit", "fields", "required"],
                &format!("feature `{}`", f.key),
                errors,
            ),
            Err(e) => {
                errors.push(e);
                continue;
            }
        };
        let mut bit = None;
        let mut bit_given = false;
        let mut fields = Vec::new();
        let mut required = false;
        for i in &inner {
            match i.key.to_string().as_str() {
                "bit" => {
                    bit_given = true;
                    if let Some((b, span)) = args::int(i, errors) {
                        if b >= 64 {
                            errors.at(span, format!("feature bit {b} does not fit the 64-bit feature words; use 0..=63"));
                        } else {
                            bit = Some(b as u32);
                        }
                    }
                }
                "fields" => fields = args::ident_array(i, errors),
                "required" => match i.value {
                    ArgValue::Flag => required = true,
                    _ => errors.at(i.key.span(), "`required` is a flag and takes no value"),
                },
                _ => {}
            }
        }
        match bit {
            Some(bit) => out.push(FeatureModel {
                name: f.key.clone(),
                bit,
                fields,
                required,
            }),
            None if bit_given => {}
            None => errors.at(f.key.span(), format!("feature `{}` needs `bit = N`", f.key)),
        }
    }
    out
}

struct Names {
    ident: Ident,
}

fn globals_type(m: &Model) -> (TokenStream, Vec<TokenStream>) {
    let mut tys = Vec::new();
    // Spanned at the user's path, so a type that is not the declared form is reported there.
    if let Some(s) = &m.state {
        tys.push(quote_spanned!(s.span()=> ::luo_abi::global::HandlerStateCell<#s>));
    }
    for f in &m.flbs {
        tys.push(
            quote_spanned!(f.span()=> ::luo_abi::__private::Arc<::luo_abi::global::FlbCell<#f>>),
        );
    }
    for s in &m.subsystems {
        tys.push(quote_spanned!(s.span()=> ::luo_abi::__private::Arc<::luo_abi::global::SubsystemCell<#s>>));
    }
    let ty = match tys.len() {
        0 => quote!(()),
        _ => quote!((#(#tys,)*)),
    };
    (ty, tys)
}

/// The `HandlerAbi` items that do not depend on the ops tables.
fn abi_items(
    m: &Model,
    read_ty: &TokenStream,
    decode: &TokenStream,
    encode: &TokenStream,
    active_of: &TokenStream,
    features: &TokenStream,
) -> TokenStream {
    let abi = m.abi.as_ref().map_or(quote!(()), |a| quote!(#a));
    let compat = m.compat.as_ref().map_or(String::new(), LitStr::value);
    let reads: Vec<String> = m.reads.iter().map(|(l, _)| l.value()).collect();
    let state_ty = match &m.state {
        Some(s) => quote!(#s),
        None => quote!(::luo_abi::global::NoState),
    };
    let (globals, _) = globals_type(m);
    let state_fn = match &m.state {
        Some(_) => quote!(::core::option::Option::Some(&globals.0)),
        None => quote!({
            let _ = globals;
            ::core::option::Option::None
        }),
    };
    let base = usize::from(m.state.is_some());
    let flb_raws = (0..m.flbs.len()).map(|i| {
        let idx = syn::Index::from(base + i);
        quote!(globals.#idx.raw())
    });
    quote! {
        type Ser = #abi;
        type Read = #read_ty;
        type State = #state_ty;
        type Globals = #globals;
        type Raw = ::luo_generated::liveupdate::liveupdate_file_handler;
        const COMPATIBLE: &'static str = #compat;
        const READS: &'static [&'static str] = &[#(#reads),*];
        const FEATURES: ::core::option::Option<::luo_abi::features::FeatureDecl> = #features;
        fn decode(ser: Self::Ser) -> ::luo_abi::Result<Self::Read> {
            #decode
        }
        fn encode(ser: &mut Self::Ser, active: u64) {
            #encode
        }
        fn active_of(ser: &Self::Ser) -> u64 {
            #active_of
        }
        fn state(globals: &Self::Globals) -> ::core::option::Option<&::luo_abi::global::HandlerStateCell<Self::State>> {
            #state_fn
        }
        fn flbs(globals: &Self::Globals) -> ::luo_abi::__private::Vec<::luo_abi::host::RawFlb> {
            let _ = globals;
            ::luo_abi::__private::vec![#(#flb_raws),*]
        }
    }
}

fn feature_parts(
    m: &Model,
) -> (
    TokenStream,
    TokenStream,
    TokenStream,
    TokenStream,
    TokenStream,
    TokenStream,
) {
    let ident = &m.ident;
    let validate = common::validate(quote!(ser));
    if m.features.is_empty() {
        return (
            quote!(Self::Ser),
            quote! { #validate ::core::result::Result::Ok(ser) },
            quote! { let _ = (ser, active); },
            quote! { let _ = ser; 0 },
            quote!(::core::option::Option::None),
            quote!(),
        );
    }
    let mask = |f: &FeatureModel| {
        let b = f.bit;
        quote!((1u64 << #b))
    };
    let supported = m.features.iter().map(mask);
    let required = m.features.iter().filter(|f| f.required).map(mask);
    let active: Vec<TokenStream> = match &m.active {
        Some(a) => m
            .features
            .iter()
            .filter(|f| a.contains(&f.name))
            .map(mask)
            .collect(),
        None => m.features.iter().map(mask).collect(),
    };
    let decl = quote! {
        ::luo_abi::features::FeatureDecl {
            supported: 0 #(| #supported)*,
            required: 0 #(| #required)*,
            active: 0 #(| #active)*,
        }
    };
    let zero_inactive: Vec<TokenStream> = m
        .features
        .iter()
        .map(|f| {
            let mk = mask(f);
            let zero = f.fields.iter().map(|fld| {
                quote_spanned! {fld.span()=> ser.#fld = ::luo_abi::__private::zerocopy::FromZeros::new_zeroed(); }
            });
            quote! { if active & #mk == 0 { #(#zero)* } }
        })
        .collect();
    let consts = m.features.iter().map(|f| {
        let n = &f.name;
        let b = f.bit;
        let s = n.to_string();
        quote! {
            #[doc = concat!("Feature bit ", stringify!(#b), " of this handler's ABI.")]
            pub const #n: ::luo_abi::features::Feature = ::luo_abi::features::Feature::new(#b, #s);
        }
    });
    let inherent = quote! {
        #[allow(non_upper_case_globals)]
        impl #ident {
            #(#consts)*

            /// Zeroes the fields of the features not in `active`.
            #[doc(hidden)]
            fn __luo_zero_inactive(ser: &mut <#ident as ::luo_abi::handler::HandlerAbi>::Ser, active: u64) {
                #(#zero_inactive)*
            }
        }
    };
    let decode = quote! {
        #validate
        let mut ser = ser;
        let hdr = ::luo_abi::features::FeatureHeader {
            supp: ser.features.supp,
            req: ser.features.req,
            active: ser.features.active,
        };
        let reserved = ser.features.reserved;
        let active = ::luo_abi::features::negotiate(
            &#decl,
            hdr,
            ::luo_abi::abi::is_zeroed(&reserved),
        )?;
        Self::__luo_zero_inactive(&mut ser, active);
        ::core::result::Result::Ok(::luo_abi::features::Negotiated::new(ser, active))
    };
    let encode = quote! {
        let hdr = ::luo_abi::features::publish(&#decl, active);
        ser.features.supp = hdr.supp;
        ser.features.req = hdr.req;
        ser.features.active = hdr.active;
        ser.features.reserved = ::luo_abi::__private::zerocopy::FromZeros::new_zeroed();
        Self::__luo_zero_inactive(ser, hdr.active);
    };
    (
        quote!(::luo_abi::features::Negotiated<Self::Ser>),
        decode,
        encode,
        quote!(ser.features.active),
        quote!(::core::option::Option::Some(#decl)),
        inherent,
    )
}

fn generate(m: &Model) -> TokenStream {
    let n = Names {
        ident: m.ident.clone(),
    };
    let ident = &n.ident;
    let (read_ty, decode, encode, active_of, features, inherent) = feature_parts(m);
    let abi_items = abi_items(m, &read_ty, &decode, &encode, &active_of, &features);
    let compat = m.compat.as_ref().map_or(String::new(), LitStr::value);

    // One ops table and raw handler per version: index 0 writes, the others read.
    let mut tables = Vec::new();
    let mut entries = Vec::new();
    let mut readers = Vec::new();
    let has = |c: &str| {
        let k = format_ident!("HAS_{}", c.to_uppercase());
        quote!(<#ident as ::luo_abi::handler::FileHandler>::#k)
    };
    let opt = |c: &str, f: TokenStream| {
        let h = has(c);
        quote!(if #h { ::core::option::Option::Some(#f) } else { ::core::option::Option::None })
    };
    {
        let reader = quote!(::luo_abi::handler::Current);
        let fields = [
            (
                "can_preserve",
                opt("can_preserve", quote!(__luo_can_preserve)),
            ),
            ("preserve", opt("preserve", quote!(__luo_preserve))),
            ("unpreserve", opt("unpreserve", quote!(__luo_unpreserve))),
            ("freeze", opt("freeze", quote!(__luo_freeze))),
            ("unfreeze", opt("unfreeze", quote!(__luo_unfreeze))),
            (
                "retrieve",
                opt("retrieve", quote!(__luo_retrieve::<#reader>)),
            ),
            (
                "can_finish",
                opt("can_finish", quote!(__luo_can_finish::<#reader>)),
            ),
            ("finish", opt("finish", quote!(__luo_finish::<#reader>))),
            ("get_id", opt("get_id", quote!(__luo_get_id))),
        ];
        tables.push(ops_table(&format_ident!("__LUO_OPS_0"), &fields));
        entries.push(entry(&format_ident!("__LUO_OPS_0"), &compat, &m.depends_on));
    }
    for (i, (lit, old)) in m.reads.iter().enumerate() {
        let rd = format_ident!("__LuoRead{}", i + 1);
        let table = format_ident!("__LUO_OPS_{}", i + 1);
        let some = |f: TokenStream| quote!(::core::option::Option::Some(#f));
        let none = quote!(::core::option::Option::None);
        let fields = [
            ("can_preserve", some(quote!(__luo_reader_can_preserve))),
            ("preserve", some(quote!(__luo_reader_preserve))),
            ("unpreserve", some(quote!(__luo_reader_unpreserve))),
            ("freeze", none.clone()),
            ("unfreeze", none.clone()),
            ("retrieve", opt("retrieve", quote!(__luo_retrieve::<#rd>))),
            (
                "can_finish",
                opt("can_finish", quote!(__luo_can_finish::<#rd>)),
            ),
            ("finish", opt("finish", quote!(__luo_finish::<#rd>))),
            ("get_id", none),
        ];
        tables.push(ops_table(&table, &fields));
        entries.push(entry(&table, &lit.value(), &m.depends_on));
        let span = lit.span();
        let validate = common::validate(quote!(old));
        // Spanned at the version string, so a missing `Migrate` impl is reported there.
        let ident = Ident::new(&ident.to_string(), span);
        readers.push(quote_spanned! {span=>
            #[doc(hidden)]
            pub struct #rd;
            impl ::luo_abi::handler::ReadAs<#ident> for #rd {
                const SIZE: usize = ::core::mem::size_of::<#old>();
                fn read(
                    handler: &#ident,
                    kho: &dyn ::luo_abi::kho::KhoService,
                    data: u64,
                ) -> ::luo_abi::Result<<#ident as ::luo_abi::handler::HandlerAbi>::Read> {
                    let old = ::luo_abi::handler::read_ser::<#old>(kho, data)?;
                    #validate
                    let new = <#ident as ::luo_abi::handler::Migrate<#old>>::migrate(handler, old)?;
                    <#ident as ::luo_abi::handler::HandlerAbi>::decode(new)
                }
            }
        });
    }
    let reader_tramps = if m.reads.is_empty() {
        quote!()
    } else {
        quote! {
            unsafe extern "C" fn __luo_reader_can_preserve(
                _handler: *mut __lu::liveupdate_file_handler,
                _file: *mut __lu::file,
            ) -> bool {
                ::luo_abi::handler::rt::reader_can_preserve()
            }
            unsafe extern "C" fn __luo_reader_preserve(_args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
                ::luo_abi::handler::rt::reader_preserve()
            }
            unsafe extern "C" fn __luo_reader_unpreserve(_args: *mut __lu::liveupdate_file_op_args) {
                ::luo_abi::handler::rt::reader_unpreserve()
            }
        }
    };

    let (state_ops_fn, state_items) = match &m.state {
        Some(_) => (
            quote! {
                fn state_ops() -> *const ::core::ffi::c_void {
                    &__LUO_STATE_OPS as *const __lu::liveupdate_fh_global_state_ops as *const ::core::ffi::c_void
                }
            },
            quote! {
                const __LUO_STATE_OPS: __lu::liveupdate_fh_global_state_ops = __lu::liveupdate_fh_global_state_ops {
                    global_state_create: ::core::option::Option::Some(__luo_state_create),
                    global_state_restore: ::core::option::Option::Some(__luo_state_restore),
                    global_state_destroy: ::core::option::Option::Some(__luo_state_destroy),
                };
                unsafe extern "C" fn __luo_state_create(
                    handler: *mut __lu::liveupdate_file_handler,
                    obj: *mut *mut ::core::ffi::c_void,
                    data_handle: *mut u64,
                ) -> ::core::ffi::c_int {
                    // SAFETY: the core passes a handler of this registration and valid out-pointers.
                    unsafe { ::luo_abi::global::rt::state_create::<#ident>(handler.cast(), obj, data_handle) }
                }
                unsafe extern "C" fn __luo_state_restore(
                    handler: *mut __lu::liveupdate_file_handler,
                    data_handle: u64,
                    obj: *mut *mut ::core::ffi::c_void,
                ) -> ::core::ffi::c_int {
                    // SAFETY: as for create.
                    unsafe { ::luo_abi::global::rt::state_restore::<#ident>(handler.cast(), data_handle, obj) }
                }
                unsafe extern "C" fn __luo_state_destroy(
                    handler: *mut __lu::liveupdate_file_handler,
                    obj: *mut ::core::ffi::c_void,
                ) {
                    // SAFETY: as for create.
                    unsafe { ::luo_abi::global::rt::state_destroy::<#ident>(handler.cast(), obj) }
                }
            },
        ),
        None => (
            quote! {
                fn state_ops() -> *const ::core::ffi::c_void {
                    ::core::ptr::null()
                }
            },
            quote!(),
        ),
    };

    let checks = checks(m);
    let uses = uses_impls(m);
    quote! {
        #inherent
        const _: () = {
            use ::luo_generated::liveupdate as __lu;

            // SAFETY: the entries are the generated structs over the ops tables below, whose
            // trampolines call the luo_abi runtime for this type.
            unsafe impl ::luo_abi::handler::HandlerAbi for #ident {
                #abi_items
                fn entries() -> &'static [Self::Raw] {
                    const __LUO_ENTRIES: &[__lu::liveupdate_file_handler] = &[#(#entries),*];
                    __LUO_ENTRIES
                }
                #state_ops_fn
            }
            #uses
            #(#tables)*
            #(#readers)*
            #state_items
            #reader_tramps

            unsafe extern "C" fn __luo_can_preserve(
                handler: *mut __lu::liveupdate_file_handler,
                file: *mut __lu::file,
            ) -> bool {
                // SAFETY: the core passes a handler of this registration and a live file.
                unsafe { ::luo_abi::handler::rt::can_preserve::<#ident>(handler.cast(), file.cast()) }
            }
            unsafe extern "C" fn __luo_preserve(args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
                // SAFETY: the core passes valid op args for a handler of this registration.
                unsafe {
                    let a = &mut *args;
                    ::luo_abi::handler::rt::preserve::<#ident>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), &mut a.serialized_data, &mut a.private_data)
                }
            }
            unsafe extern "C" fn __luo_unpreserve(args: *mut __lu::liveupdate_file_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *args;
                    ::luo_abi::handler::rt::unpreserve::<#ident>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, &mut a.private_data)
                }
            }
            unsafe extern "C" fn __luo_freeze(args: *mut __lu::liveupdate_file_op_args) -> ::core::ffi::c_int {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *args;
                    ::luo_abi::handler::rt::freeze::<#ident>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), &mut a.serialized_data, a.private_data)
                }
            }
            unsafe extern "C" fn __luo_unfreeze(args: *mut __lu::liveupdate_file_op_args) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *args;
                    ::luo_abi::handler::rt::unfreeze::<#ident>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.private_data)
                }
            }
            unsafe extern "C" fn __luo_retrieve<V: ::luo_abi::handler::ReadAs<#ident>>(
                args: *mut __lu::liveupdate_file_op_args,
            ) -> ::core::ffi::c_int {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &mut *args;
                    let mut file = ::core::ptr::null_mut();
                    let r = ::luo_abi::handler::rt::retrieve::<#ident, V>(
                        a.handler.cast(), a.session.cast(), a.serialized_data, &mut file);
                    if r == 0 {
                        a.file = file.cast();
                    }
                    r
                }
            }
            unsafe extern "C" fn __luo_can_finish<V: ::luo_abi::handler::ReadAs<#ident>>(
                args: *mut __lu::liveupdate_file_op_args,
            ) -> bool {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*args;
                    ::luo_abi::handler::rt::can_finish::<#ident, V>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.retrieve_status)
                }
            }
            unsafe extern "C" fn __luo_finish<V: ::luo_abi::handler::ReadAs<#ident>>(
                args: *mut __lu::liveupdate_file_op_args,
            ) {
                // SAFETY: as for preserve.
                unsafe {
                    let a = &*args;
                    ::luo_abi::handler::rt::finish::<#ident, V>(
                        a.handler.cast(), a.session.cast(), a.file.cast(), a.serialized_data, a.retrieve_status)
                }
            }
            unsafe extern "C" fn __luo_get_id(file: *mut __lu::file) -> ::core::ffi::c_ulong {
                // SAFETY: the core passes a live file.
                unsafe { ::luo_abi::handler::rt::get_id::<#ident>(file.cast()) as ::core::ffi::c_ulong }
            }
            #checks
        };
    }
}

fn ops_table(name: &Ident, fields: &[(&str, TokenStream)]) -> TokenStream {
    let f = fields.iter().map(|(k, v)| {
        let k = format_ident!("{}", k);
        quote!(#k: #v,)
    });
    quote! {
        const #name: __lu::liveupdate_file_ops = __lu::liveupdate_file_ops {
            #(#f)*
            owner: ::core::ptr::null_mut(),
        };
    }
}

fn entry(table: &Ident, compat: &str, depends_on: &[LitStr]) -> TokenStream {
    // `depends_on` is a NULL-terminated array of NUL-terminated compatible strings.
    let deps = if depends_on.is_empty() {
        quote!(::core::ptr::null())
    } else {
        let strs = depends_on.iter().map(|d| {
            let bytes = syn::LitByteStr::new(format!("{}\0", d.value()).as_bytes(), d.span());
            quote!(#bytes.as_ptr())
        });
        quote!([#(#strs,)* ::core::ptr::null()].as_ptr())
    };
    quote! {
        __lu::liveupdate_file_handler {
            ops: &#table,
            compatible: ::luo_abi::abi::compat_bytes(#compat),
            depends_on: #deps,
        }
    }
}

fn uses_impls(m: &Model) -> TokenStream {
    let ident = &m.ident;
    let base = usize::from(m.state.is_some());
    let all = m.flbs.iter().chain(&m.subsystems);
    let impls = all.enumerate().map(|(i, p)| {
        let idx = syn::Index::from(base + i);
        quote_spanned! {p.span()=>
            // SAFETY: the cell is the declared one, in the globals tuple.
            unsafe impl ::luo_abi::handler::Uses<#p> for #ident {
                fn global(globals: &Self::Globals) -> &<#p as ::luo_abi::global::Global>::Cell {
                    &globals.#idx
                }
            }
        }
    });
    quote!(#(#impls)*)
}

/// Compile-time checks spanned at the user's tokens.
fn checks(m: &Model) -> TokenStream {
    let mut out = Vec::new();
    if let Some(s) = &m.state {
        out.push(assert_impl(s, quote!(::luo_abi::global::DeclaredState)));
    }
    for f in &m.flbs {
        out.push(assert_impl(f, quote!(::luo_abi::global::FlbState)));
    }
    for s in &m.subsystems {
        out.push(assert_impl(s, quote!(::luo_abi::global::Subsystem)));
    }
    quote!(#(#out)*)
}

/// On errors: the `HandlerAbi` impl with the types that could be parsed and no ops tables,
/// so the impl block and the handler's own code do not produce follow-on errors.
fn fallback(m: &Model) -> TokenStream {
    if m.abi.is_none() {
        return quote!();
    }
    let ident = &m.ident;
    // The handler's own signatures follow what it asked for (`name` means negotiated).
    let read_ty = if m.versionless {
        quote!(::luo_abi::features::Negotiated<Self::Ser>)
    } else {
        quote!(Self::Ser)
    };
    let abi_items = abi_items(
        m,
        &read_ty,
        &quote! { let _ = ser; ::core::unreachable!() },
        &quote! { let _ = (ser, active); },
        &quote! { let _ = ser; 0 },
        &quote!(::core::option::Option::None),
    );
    let consts = m.features.iter().map(|f| {
        let n = &f.name;
        let b = f.bit;
        let s = n.to_string();
        quote!(pub const #n: ::luo_abi::features::Feature = ::luo_abi::features::Feature::new(#b, #s);)
    });
    let uses = uses_impls(m);
    quote! {
        #[allow(non_upper_case_globals)]
        impl #ident {
            #(#consts)*
        }
        const _: () = {
            // SAFETY: never registered: the crate does not compile.
            unsafe impl ::luo_abi::handler::HandlerAbi for #ident {
                #abi_items
                fn entries() -> &'static [Self::Raw] {
                    &[]
                }
                fn state_ops() -> *const ::core::ffi::c_void {
                    ::core::ptr::null()
                }
            }
            #uses
        };
    }
}
